"""Which classes of a dataset mean "ok" and which are defect types.

A model may have several defect types and several ok classes; a part is defective when it is not of
an ok class. Binary datasets keep the original rule (the defect class is the requested one, else the
first whose name starts with "def", else the first class; the other class is ok). With more classes:

1. ``ok_classes`` as requested, else
2. the classes named like "ok" (see :data:`OK_NAMES`, :data:`OK_PREFIXES`), else
3. when some class names start with "def", the ones that do not, else
4. with an explicit ``defect_class``, every other class (one defect type), else
5. an InvalidArgument asking for ``ok_classes``: guessing would silently serve wrong verdicts.

``defect_class`` (one name, kept for the existing API and the manifest) is then the requested one or
the first defect type (preferring a "def" prefix).
"""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import InvalidArgument

OK_NAMES = frozenset({"ok", "good", "normal", "pass", "nominal", "no_defect", "nodefect", "non_defective"})
OK_PREFIXES = ("ok_", "ok-", "good_", "good-")


def _looks_ok(name: str) -> bool:
    lower = name.lower()
    return lower in OK_NAMES or lower.startswith(OK_PREFIXES)


def _is_def(name: str) -> bool:
    return name.lower().startswith("def")


def resolve_defect_class(classes: Sequence[str], requested: str) -> str:
    """The requested class (must exist), else the first class starting with "def", else the first class."""
    if requested:
        if requested not in classes:
            raise InvalidArgument(f"defect_class {requested!r} is not a class of the dataset {list(classes)}")
        return requested
    return next((c for c in classes if _is_def(c)), classes[0])


def _default_ok(classes: Sequence[str], defect_class: str) -> list[str]:
    named = [c for c in classes if _looks_ok(c)]
    if named:
        return named
    if any(_is_def(c) for c in classes) and not all(_is_def(c) for c in classes):
        return [c for c in classes if not _is_def(c)]
    if defect_class:
        return [c for c in classes if c != defect_class]
    raise InvalidArgument(
        f"the dataset has {len(classes)} classes {list(classes)} and none is recognisably 'ok': set ok_classes "
        "to the classes that mean not defective"
    )


def resolve_class_roles(classes: Sequence[str], defect_class: str = "",
                        ok_classes: Sequence[str] = ()) -> tuple[str, list[str]]:
    """(defect_class, ok_classes) for a dataset's classes; ok_classes in class order.

    Raises:
        InvalidArgument: an unknown class, a defect class listed as ok, no defect type left, or (more
            than two classes) no way to tell which classes are ok.
    """
    classes = list(classes)
    if defect_class and defect_class not in classes:
        raise InvalidArgument(f"defect_class {defect_class!r} is not a class of the dataset {classes}")
    if ok_classes:
        unknown = [c for c in ok_classes if c not in classes]
        if unknown:
            raise InvalidArgument(f"ok_classes {unknown} are not classes of the dataset {classes}")
        if len(set(ok_classes)) != len(ok_classes):
            raise InvalidArgument(f"ok_classes lists a class twice: {list(ok_classes)}")
        ok = [c for c in classes if c in set(ok_classes)]
    elif len(classes) == 2:
        defect = resolve_defect_class(classes, defect_class)
        return defect, [c for c in classes if c != defect]
    else:
        ok = _default_ok(classes, defect_class)
    if defect_class in ok:
        raise InvalidArgument(f"defect_class {defect_class!r} is also listed as an ok class")
    defects = [c for c in classes if c not in ok]
    if not defects:
        raise InvalidArgument(f"every class {classes} is an ok class: at least one defect class is needed")
    defect = defect_class or next((c for c in defects if _is_def(c)), defects[0])
    return defect, ok
