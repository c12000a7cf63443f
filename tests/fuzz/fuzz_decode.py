"""Coverage-guided fuzzer (atheris) of the decode path: image headers and pixels, mask images and box text.

Every input must either decode within the limits or raise the domain error (BadImage / InvalidArgument);
anything else (another exception, a crash in a codec, memory beyond ``-rss_limit_mb``) is a finding.

Run for a bounded time, new inputs going to a scratch folder and the checked-in corpus as seeds::

    python tests/fuzz/fuzz_decode.py /tmp/fuzz-work tests/corpus/files -max_total_time=60 -rss_limit_mb=2048

(libFuzzer writes new inputs into the *first* folder, so keep the seeds second.) tests/unit/test_fuzz_decode.py
runs it for a few seconds when atheris is installed (``pip install .[fuzz]``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["common"]):  # our parsers; instrumenting numpy only slows the start
    from common.errors import InvalidArgument
    from common.images import decode_image, silence_opencv_logs
    from common.masks import MASK_FORMATS, load_mask

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 1_000_000}  # small: a fuzzer must not allocate gigabytes


def test_one_input(data: bytes) -> None:
    """Each input as an image and as a mask (the length picks the mask format), so seeds are used as they are."""
    try:
        image = decode_image(data, allow_alpha=len(data) % 2 == 0, **LIMITS)
    except InvalidArgument:
        pass
    else:
        assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] * image.shape[1] <= LIMITS["max_pixels"]
    fmt = MASK_FORMATS[len(data) % len(MASK_FORMATS)]
    try:
        mask = load_mask(data, fmt, 37, 53, max_boxes=100, **LIMITS)
    except InvalidArgument:
        return
    assert mask.shape == (37, 53) and mask.any()


def main() -> None:
    silence_opencv_logs()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
