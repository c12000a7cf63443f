"""The layering holds: services never import each other and common never imports a service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("trainer", "classifier", "explainer")


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def owner(module: str) -> str | None:
    """The service a module belongs to, or None for anything else."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" and parts[1] in SERVICES else None


def violations(folder: Path, allowed_service: str | None) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for module in sorted(imported_modules(path)):
            service = owner(module)
            if service is not None and service != allowed_service:
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    assert violations(ROOT / "services" / service, service) == []


def test_common_imports_no_service() -> None:
    assert violations(ROOT / "common", None) == []


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom services.trainer.spec import parse_job_spec\n")
    assert "services.trainer.spec" in imported_modules(probe)
    assert owner("services.trainer.spec") == "trainer" and owner("common.images") is None
