"""Explanation method names <-> the proto's ``Method`` enum, derived from the generated descriptor.

One rule, no hand table: ``METHOD_GRADCAM_PLUS_PLUS`` is ``gradcam++``, other underscores become
hyphens (``METHOD_GRAD_X_INPUT`` is ``grad-x-input``), ``METHOD_UNSPECIFIED`` is ``""`` (the
manifest's default). Torch-free, so the CLI can read it; the implementations are
``services.explainer.cam.METHODS`` under the same names (a test checks both lists agree).
"""

from __future__ import annotations

from protos.zdm.v1 import explainer_pb2

_PREFIX = "METHOD_"


def word(enum_name: str) -> str:
    """``METHOD_GRADCAM_PLUS_PLUS`` -> ``gradcam++``; ``METHOD_UNSPECIFIED`` -> ``""``."""
    if enum_name == "METHOD_UNSPECIFIED":
        return ""
    return enum_name.removeprefix(_PREFIX).lower().replace("_plus_plus", "++").replace("_", "-")


#: enum value -> method name, ``METHOD_UNSPECIFIED`` -> ``""``.
NAMES: dict[int, str] = {v.number: word(v.name) for v in explainer_pb2.Method.DESCRIPTOR.values}
#: method name -> enum value (``""`` -> ``METHOD_UNSPECIFIED``).
ENUMS: dict[str, int] = {name: number for number, name in NAMES.items()}


def name_of(value: int) -> str:
    """The method name of an enum value; an unknown value (a newer client) gives ``"unknown(<n>)"``,
    which the engine rejects as an unknown method."""
    return NAMES.get(value, f"unknown({value})")


__all__ = ["ENUMS", "NAMES", "name_of", "word"]
