"""The checked-in corpus of malformed files: each is refused with its expected message, nothing else escapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import BadImage, InvalidArgument
from common.images import decode_image
from common.masks import load_mask

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
EXPECTED: dict[str, dict[str, str]] = json.loads((CORPUS / "expected.json").read_text())


def test_every_file_has_an_expectation_and_the_corpus_is_small() -> None:
    files = {p.name for p in (CORPUS / "files").iterdir()}
    assert files == set(EXPECTED)
    assert sum(p.stat().st_size for p in (CORPUS / "files").iterdir()) < 100_000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_is_refused_with_its_message(name: str) -> None:
    case = EXPECTED[name]
    data = (CORPUS / "files" / name).read_bytes()
    if case["kind"] == "image":
        with pytest.raises(BadImage, match=case["error"]):
            decode_image(data, allow_alpha=False)
    else:
        with pytest.raises(InvalidArgument, match=case["error"]):
            load_mask(data, case["format"], 100, 100)
