"""Image input: decode untrusted bytes safely, preprocess for a model, encode PNGs.

Every service decodes with :func:`decode_image` and prepares model input with :func:`preprocess`
(training included), so the pixels a model sees in serving are computed exactly as in training.

Decoding is defensive: the format is sniffed from magic bytes (JPEG, PNG, BMP, TIFF only), the pixel
count is read from the header and checked *before* any pixel buffer is allocated (decompression
bombs), and every failure is a :class:`~common.errors.BadImage`, never a crash.
EXIF orientation is ignored: pixels are used as stored, identically in training and serving.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from common.errors import BadImage, InvalidArgument

FORMATS = ("jpeg", "png", "bmp", "tiff")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# JPEG start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


class ImageHeader(NamedTuple):
    """What the header says about an image, read without decoding pixels."""

    format: str
    width: int
    height: int


def _label(name: str) -> str:
    return f"image {name!r}" if name else "image"


def sniff_format(data: bytes) -> str | None:
    """Return "jpeg", "png", "bmp" or "tiff" from the magic bytes, or None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] in _TIFF_MAGICS:
        return "tiff"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the marker segments up to the first scan; return the SOF size and check for an EOI."""
    n = len(data)
    i = 2
    size: tuple[int, int] | None = None
    while i < n:
        if data[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at offset {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:
            raise ValueError("JPEG ends before its first scan")
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2:
            raise ValueError("JPEG segment with a bad length")
        if marker in _JPEG_SOF:
            if i + 7 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            if height == 0:
                raise ValueError("JPEG with the height defined later (DNL) is not supported")
            size = (width, height)
        elif marker == 0xDA:  # start of scan: entropy-coded data follows
            if size is None:
                raise ValueError("JPEG scan before any frame header")
            # 0xFF inside entropy-coded data is always stuffed, so FFD9 after a scan is the real EOI.
            if data.find(b"\xff\xd9", i + length) < 0:
                raise ValueError("JPEG is truncated (no end-of-image marker)")
            return size
        i += length
    raise ValueError("JPEG is truncated in its header")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise ValueError("BMP header is truncated")
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    elif dib_size >= 40:
        width, height = struct.unpack("<ii", data[18:26])
        height = abs(height)  # negative height = top-down rows
    else:
        raise ValueError(f"BMP with an unknown DIB header size {dib_size}")
    return width, height


_TIFF_TYPE_FORMATS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Read ImageWidth / ImageLength from the first IFD (classic TIFF and BigTIFF)."""
    endian = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        head, count_fmt, entry_size, value_size = 16, "Q", 20, 8
        if len(data) < head:
            raise ValueError("TIFF header is truncated")
        (ifd,) = struct.unpack(endian + "Q", data[8:16])
    else:
        head, count_fmt, entry_size, value_size = 8, "H", 12, 4
        if len(data) < head:
            raise ValueError("TIFF header is truncated")
        (ifd,) = struct.unpack(endian + "I", data[4:8])
    count_size = struct.calcsize(count_fmt)
    if ifd < head or ifd + count_size > len(data):
        raise ValueError("TIFF directory offset is outside the file")
    (entries,) = struct.unpack(endian + count_fmt, data[ifd : ifd + count_size])
    found: dict[int, int] = {}
    pos = ifd + count_size
    for _ in range(entries):
        if pos + entry_size > len(data):
            raise ValueError("TIFF directory is truncated")
        tag, typ = struct.unpack(endian + "HH", data[pos : pos + 4])
        if tag in (256, 257):
            fmt = _TIFF_TYPE_FORMATS.get(typ)
            if fmt is None:
                raise ValueError(f"TIFF size tag {tag} has an unexpected type {typ}")
            value_at = pos + entry_size - value_size
            (found[tag],) = struct.unpack(endian + fmt, data[value_at : value_at + struct.calcsize(fmt)])
            if len(found) == 2:
                break
        pos += entry_size
    if 256 not in found or 257 not in found:
        raise ValueError("TIFF without ImageWidth/ImageLength")
    return found[256], found[257]


_SIZE_READERS = {"jpeg": _jpeg_size, "png": _png_size, "bmp": _bmp_size, "tiff": _tiff_size}


def read_header(data: bytes, *, name: str = "") -> ImageHeader:
    """Sniff the format and read the pixel size from the header, without decoding pixels.

    Raises:
        BadImage: empty data, an unsupported format, or a header that cannot be parsed.
    """
    if not data:
        raise BadImage(f"{_label(name)} is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage(
            f"{_label(name)} has an unsupported format (first bytes {data[:8]!r}); accepted: {', '.join(FORMATS)}"
        )
    try:
        width, height = _SIZE_READERS[fmt](data)
    except (ValueError, struct.error) as exc:
        raise BadImage(f"{_label(name)} is not a valid {fmt.upper()}: {exc}") from exc
    if width <= 0 or height <= 0:
        raise BadImage(f"{_label(name)} has an empty size {width}x{height}")
    return ImageHeader(fmt, width, height)


def _to_uint8(img: np.ndarray, label: str) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)  # rounds and saturates
    raise BadImage(f"{label} has an unsupported sample type {img.dtype}")


def _to_rgb(img: np.ndarray, label: str, allow_alpha: bool = True) -> np.ndarray:
    if img.ndim not in (2, 3):
        raise BadImage(f"{label} decoded to an unexpected shape {img.shape}")
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (2, 4) and not allow_alpha:
        raise BadImage(f"{label} has an alpha channel ({channels} channels); send grayscale or RGB without alpha")
    if channels == 1:
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    if channels == 2:  # gray + alpha
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:  # alpha is dropped, not composited
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise BadImage(f"{label} has an unsupported channel count {channels}")


def decode_image(
    data: bytes, *, max_bytes: int = 20_000_000, max_pixels: int = 40_000_000, name: str = "", allow_alpha: bool = True
) -> np.ndarray:
    """Decode JPEG/PNG/BMP/TIFF bytes into a uint8 RGB array of shape (H, W, 3).

    Grayscale is replicated to three channels, alpha is dropped, 16-bit samples are scaled to 8 bits.

    Args:
        data: the encoded file.
        max_bytes: reject larger inputs before looking at them.
        max_pixels: reject images whose header claims more pixels, before decoding.
        name: shown in error messages (a file name or a request's image id).
        allow_alpha: False rejects images with an alpha channel (2 or 4 channels) instead of dropping it.

    Raises:
        BadImage: for every input that is not a decodable image within the limits.
    """
    label = _label(name)
    if len(data) > max_bytes:
        raise BadImage(f"{label} is too large: {len(data)} bytes > limit {max_bytes}")
    header = read_header(data, name=name)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise BadImage(f"{label} is too large: {header.width}x{header.height} = {pixels} pixels > limit {max_pixels}")
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise BadImage(f"{label} could not be decoded as {header.format.upper()}: {exc}") from exc
    if img is None or img.size == 0:
        raise BadImage(f"{label} could not be decoded as {header.format.upper()} (truncated or corrupt)")
    return _to_rgb(_to_uint8(img, label), label, allow_alpha)


def _norm_params(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) so that out = pixel * scale - shift == (pixel / 255 - mean) / std."""
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    if m.shape != (3,) or s.shape != (3,):
        raise InvalidArgument(f"mean and std need 3 values each, got {list(mean)} and {list(std)}")
    if not np.all(s > 0):
        raise InvalidArgument(f"std values must be positive, got {list(std)}")
    return (1.0 / (255.0 * s)).astype(np.float32), (m / s).astype(np.float32)


def resize_for_model(img: np.ndarray, image_size: int) -> np.ndarray:
    """The resize step of :func:`preprocess`: uint8 (H, W, 3) → uint8 (S, S, 3).

    Grayscale (H, W) or (H, W, 1) input is replicated to RGB first.
    """
    if image_size <= 0:
        raise InvalidArgument(f"image_size must be positive, got {image_size}")
    if img.dtype != np.uint8:
        raise InvalidArgument(f"preprocess expects uint8 pixels, got {img.dtype}")
    img = np.ascontiguousarray(img)  # OpenCV rejects negative strides (flipped views)
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        img = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InvalidArgument(f"preprocess expects an (H, W, 3) RGB image, got shape {img.shape}")
    h, w = img.shape[:2]
    if h == image_size and w == image_size:
        return img
    shrinking = h >= image_size and w >= image_size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(img, (image_size, image_size), interpolation=interpolation)


def preprocess(img: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Resize an RGB uint8 image to image_size², scale to [0, 1] and normalise per channel.

    Shrinking uses INTER_AREA, growing INTER_LINEAR; the aspect ratio is not kept (a plain
    square resize, as the thesis did). Returns a contiguous float32 (3, S, S) array.
    """
    scale, shift = _norm_params(mean, std)
    resized = resize_for_model(img, image_size)
    out = np.empty((3, image_size, image_size), dtype=np.float32)
    _normalise_into(resized, scale, shift, out)
    return out


def _normalise_into(resized: np.ndarray, scale: np.ndarray, shift: np.ndarray, out: np.ndarray) -> None:
    for c, plane in enumerate(cv2.split(resized)):  # contiguous planes: faster than strided views
        np.multiply(plane, scale[c], out=out[c], dtype=np.float32)
        out[c] -= shift[c]


def preprocess_batch(
    images: Sequence[np.ndarray], image_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """:func:`preprocess` for many images at once: a contiguous float32 (N, 3, S, S) array."""
    scale, shift = _norm_params(mean, std)
    if image_size <= 0:
        raise InvalidArgument(f"image_size must be positive, got {image_size}")
    out = np.empty((len(images), 3, image_size, image_size), dtype=np.float32)
    for i, img in enumerate(images):
        _normalise_into(resize_for_model(img, image_size), scale, shift, out[i])
    return out


def encode_png(img: np.ndarray) -> bytes:
    """Encode a uint8 (or uint16) grayscale (H, W) or RGB (H, W, 3) array as PNG bytes."""
    if img.dtype not in (np.uint8, np.uint16):
        raise InvalidArgument(f"encode_png expects uint8 or uint16 pixels, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim != 2:
        raise InvalidArgument(f"encode_png expects (H, W) or (H, W, 3), got shape {img.shape}")
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise InvalidArgument(f"PNG encoding failed for an array of shape {img.shape}")
    return buf.tobytes()


def silence_opencv_logs() -> None:
    """Stop OpenCV printing codec warnings/errors for bad inputs (call once from a service's main).

    Bad inputs still raise :class:`BadImage`; this only removes OpenCV's own stderr noise.
    libpng may still print a one-line message on its own.
    """
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
