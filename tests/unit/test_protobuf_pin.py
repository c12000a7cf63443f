"""pyproject's protobuf requirement must admit exactly the runtimes the checked-in generated code accepts.

Each generated ``*_pb2.py`` calls ``ValidateProtobufRuntimeVersion(domain, major, minor, patch, ...)``
at import and raises VersionError on an older runtime; a looser pin lets pip install one.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import google.protobuf
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_CHECK = re.compile(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),")


def _gencode_versions() -> dict[str, Version]:
    found = {}
    for path in sorted((ROOT / "protos").rglob("*_pb2.py")):
        match = _CHECK.search(path.read_text())
        assert match, f"{path} has no runtime version check"
        found[str(path.relative_to(ROOT))] = Version(".".join(match.groups()))
    assert found
    return found


def _protobuf_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "protobuf"]
    assert len(reqs) == 1
    return reqs[0]


def _just_below(v: Version) -> Version:
    if v.micro:
        return Version(f"{v.major}.{v.minor}.{v.micro - 1}")
    if v.minor:
        return Version(f"{v.major}.{v.minor - 1}.999")
    return Version(f"{v.major - 1}.999.999")


def test_pin_starts_at_the_newest_gencode() -> None:
    needed = max(_gencode_versions().values())
    spec = _protobuf_requirement().specifier
    assert spec.contains(needed), f"pyproject's protobuf{spec} excludes {needed}, which the generated code needs"
    assert not spec.contains(_just_below(needed)), f"protobuf{spec} admits {_just_below(needed)}; the code needs >= {needed}"
    assert not spec.contains(Version("6.31")), "the old pin's runtime raises VersionError on our generated code"


def test_installed_runtime_satisfies_the_pin() -> None:
    assert _protobuf_requirement().specifier.contains(Version(google.protobuf.__version__))
