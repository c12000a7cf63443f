"""The checked-in generated code must match the .proto files."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = [Path("protos/zdm/v1"), Path("protos/inference")]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
def test_generated_code_is_fresh(tmp_path: Path) -> None:
    import importlib.machinery
    import importlib.util as iu

    loader = importlib.machinery.SourceFileLoader("gen_protos", str(ROOT / "scripts" / "gen_protos.py"))
    spec = iu.spec_from_loader("gen_protos", loader)
    module = iu.module_from_spec(spec)
    loader.exec_module(module)
    module.generate(tmp_path)
    for folder in GENERATED:
        fresh = sorted(p.name for p in (tmp_path / folder).glob("*_pb2*"))
        checked_in = sorted(p.name for p in (ROOT / folder).glob("*_pb2*"))
        assert fresh and fresh == checked_in, folder
        stale = [n for n in fresh if not filecmp.cmp(tmp_path / folder / n, ROOT / folder / n, shallow=False)]
        assert not stale, f"regenerate with `python scripts/gen_protos.py`: stale {folder}/{stale}"
