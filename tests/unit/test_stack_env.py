"""`zdm up` / the Stack hand the services a ZDM_DATA_ROOTS that honours the user's own setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.stack import Stack
from common.settings import CommonSettings


def _roots(stack: Stack) -> list[str]:
    return json.loads(stack.env()["ZDM_DATA_ROOTS"])


@pytest.mark.parametrize("style", ["pathsep", "json"])
def test_user_data_roots_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, style: str) -> None:
    a, b = tmp_path / "lineA", tmp_path / "lineB"
    value = f"{a}:{b}" if style == "pathsep" else json.dumps([str(a), str(b)])
    monkeypatch.setenv("ZDM_DATA_ROOTS", value)
    monkeypatch.chdir(tmp_path.parent)
    stack = Stack(home=tmp_path / "home", data_roots=[tmp_path / "extra"])
    roots = _roots(stack)
    assert roots == [str((tmp_path / "home" / "data").resolve()), str(a), str(b), str(tmp_path / "extra")]
    assert str(Path.cwd().resolve()) not in roots  # the user's list is not widened with the working directory
    # The services read the value the stack hands them exactly as they read the user's.
    monkeypatch.setenv("ZDM_DATA_ROOTS", stack.env()["ZDM_DATA_ROOTS"])
    assert [str(p) for p in CommonSettings().data_roots] == roots


def test_default_roots_without_a_user_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZDM_DATA_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _roots(Stack(home=tmp_path / "home")) == [str((tmp_path / "home" / "data").resolve()), str(tmp_path.resolve())]
