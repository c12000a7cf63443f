"""Confine caller-supplied paths to configured data roots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.errors import InvalidArgument, NotFound, PermissionDenied


def resolve_under_roots(path: str | Path, roots: Sequence[Path]) -> Path:
    """Resolve ``path`` (symlinks and ``..`` included) and require it to lie under one of ``roots``.

    An absolute path is resolved as is. A relative path is tried under each root in order and the
    first existing match wins, so a job can name ``casting`` instead of ``/data/casting``.
    The containment check comes before the existence check, so callers learn nothing about
    files outside the roots; messages repeat only the caller's own path, never the server's roots
    or the absolute paths they resolve to.

    Raises:
        InvalidArgument: an empty path or one with a NUL byte.
        PermissionDenied: the resolved path is outside every root.
        NotFound: the path is inside a root but does not exist.
    """
    text = str(path)
    if not text.strip():
        raise InvalidArgument("path is empty")
    if "\x00" in text:
        raise InvalidArgument("path contains a NUL byte")
    resolved_roots = [Path(r).resolve() for r in roots]
    raw = Path(text)
    candidates = [raw] if raw.is_absolute() else [root / raw for root in resolved_roots]
    inside: list[Path] = []
    for candidate in candidates:
        resolved = candidate.resolve()
        if any(resolved.is_relative_to(root) for root in resolved_roots):
            if resolved.exists():
                return resolved
            inside.append(resolved)
    if not inside:
        hint = "" if resolved_roots else " (the server has no data roots configured)"
        raise PermissionDenied(f"path {text!r} is outside the allowed data roots{hint}")
    raise NotFound(f"path {text!r} does not exist under the data roots")
