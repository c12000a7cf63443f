"""Image input: decode untrusted bytes safely, preprocess for a model, encode PNGs.

Every service decodes with :func:`decode_image` and prepares model input with :func:`preprocess`
(training included), so the pixels a model sees in serving are computed exactly as in training.

Decoding is defensive: the format is sniffed from magic bytes (JPEG, PNG, BMP, TIFF only); the pixel
count, the channel count (alpha), the sample depth (16-bit) and a TIFF's tile size are read from the header
and checked *before* any pixel buffer is allocated (decompression bombs), and every failure is a
:class:`~common.errors.BadImage`, never a crash. ``OPENCV_IO_MAX_IMAGE_PIXELS`` is set (unless the
environment sets it) as a backstop for decoders reached some other way.
EXIF orientation is ignored: pixels are used as stored, identically in training and serving.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import NamedTuple

# OpenCV reads this once, at its first decode: set it before cv2 is imported by anyone through us.
OPENCV_PIXEL_BACKSTOP = 100_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_PIXEL_BACKSTOP))

import cv2  # noqa: E402 - after the backstop above
import numpy as np  # noqa: E402

from common.errors import BadImage, InvalidArgument  # noqa: E402

FORMATS = ("jpeg", "png", "bmp", "tiff")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# JPEG start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


class ImageHeader(NamedTuple):
    """What the header says about an image, read without decoding pixels.

    ``channels`` is the number OpenCV decodes to (an upper bound where the header leaves it open),
    ``alpha`` whether one of them is an alpha channel, ``sample_bytes`` 1 or 2 (16-bit),
    ``tile_width`` / ``tile_height`` a tiled TIFF's tile size (0 for every other image).
    """

    format: str
    width: int
    height: int
    channels: int = 3
    alpha: bool = False
    sample_bytes: int = 1
    tile_width: int = 0
    tile_height: int = 0

    @property
    def decoded_bytes(self) -> int:
        """Size of the buffer OpenCV allocates to decode the image."""
        return self.width * self.height * self.channels * self.sample_bytes

    @property
    def tile_bytes(self) -> int:
        """Upper bound of the buffer OpenCV allocates for one TIFF tile, besides the image (0 when not tiled).

        The tile size is not bounded by the image size: a 1x1 TIFF declaring 16384x16368 tiles made
        OpenCV allocate (and fill) 1 GB (found by tests/fuzz). 8-bit tiles are read as RGBA: 4 samples a pixel.
        """
        return self.tile_width * self.tile_height * 4 * self.sample_bytes


def _label(name: str) -> str:
    if len(name) > 100:  # messages travel in gRPC trailers (8 KiB by default): never echo a huge name whole
        name = name[:100] + "..."
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


_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}  # colour type -> decoded channels (gray + alpha decodes as BGRA)


def _png_chunks(data: bytes) -> set[bytes]:
    """Walk the chunks up to IEND (or the end of the data); return the types seen before the first IDAT.

    Every chunk's declared length must fit inside the file: OpenCV allocates a chunk's declared size
    before reading it, so an 88-byte file claiming a 2 GB chunk cost 2 GB (found by tests/fuzz).
    """
    before_data: set[bytes] = set()
    seen_data = False
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            raise ValueError(f"truncated or corrupt: chunk {kind!r} at offset {pos} claims {length} bytes past the end")
        if kind == b"IEND":
            break
        seen_data = seen_data or kind == b"IDAT"
        if not seen_data:
            before_data.add(kind)
        pos += 12 + length
    return before_data


def _png_header(data: bytes) -> tuple[int, int, int, bool, int]:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise ValueError("PNG without an IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    depth, color_type = data[24], data[25]
    chunks = _png_chunks(data)
    if color_type not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ValueError(f"PNG with an invalid colour type {color_type} / bit depth {depth}")
    channels = _PNG_CHANNELS[color_type]
    alpha = color_type in (4, 6)
    if color_type in (2, 3) and b"tRNS" in chunks:
        channels, alpha = 4, True
    return width, height, channels, alpha, 2 if depth == 16 else 1


def _jpeg_header(data: bytes) -> tuple[int, int, int, bool, int]:
    """Walk the marker segments up to the first scan; return the SOF's size and format; check for an EOI."""
    n = len(data)
    i = 2
    size: tuple[int, int, int, bool, int] | None = None
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
            if i + 8 > n:
                break
            precision = data[i + 2]
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            components = data[i + 7]
            if height == 0:
                raise ValueError("JPEG with the height defined later (DNL) is not supported")
            if components not in (1, 3, 4):
                raise ValueError(f"JPEG with {components} colour components")
            # CMYK (4 components) decodes to 3 channels; 12-bit JPEGs decode to 16-bit samples.
            size = (width, height, 1 if components == 1 else 3, False, 2 if precision > 8 else 1)
        elif marker == 0xDA:  # start of scan: entropy-coded data follows
            if size is None:
                raise ValueError("JPEG scan before any frame header")
            # 0xFF inside entropy-coded data is always stuffed, so FFD9 after a scan is the real EOI.
            if data.find(b"\xff\xd9", i + length) < 0:
                raise ValueError("JPEG is truncated (no end-of-image marker)")
            return size
        i += length
    raise ValueError("JPEG is truncated in its header")


def _bmp_header(data: bytes) -> tuple[int, int, int, bool, int]:
    if len(data) < 30:
        raise ValueError("BMP header is truncated")
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:  # BITMAPCOREHEADER
        width, height, _planes, bpp = struct.unpack("<HHHH", data[18:26])
    elif dib_size >= 40:
        width, height, _planes, bpp = struct.unpack("<iiHH", data[18:30])
        height = abs(height)  # negative height = top-down rows
    else:
        raise ValueError(f"BMP with an unknown DIB header size {dib_size}")
    alpha = bpp == 32
    return width, height, 4 if alpha else 3, alpha, 1


_TIFF_TYPE_FORMATS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_PHOTOMETRIC, _TIFF_SAMPLES, _TIFF_EXTRA = 256, 257, 258, 262, 277, 338
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
_TIFF_TAGS = (_TIFF_WIDTH, _TIFF_LENGTH, _TIFF_BITS, _TIFF_PHOTOMETRIC, _TIFF_SAMPLES, _TIFF_EXTRA, _TIFF_TILE_WIDTH,
              _TIFF_TILE_LENGTH)


def _tiff_header(data: bytes) -> tuple[int, int, int, bool, int, int, int]:
    """Read size, samples per pixel, bits per sample, extra samples and tile size from the first IFD (classic and BigTIFF).

    For tags holding several values (BitsPerSample of RGB) the first value is read, inline or at its offset.
    A tag appearing twice is refused: libtiff keeps the first of some and the last of others, so a
    duplicate could show these checks a 1x1 image and the decoder a huge one.
    """
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
    seen: set[int] = set()
    pos = ifd + count_size
    for _ in range(entries):
        if pos + entry_size > len(data):
            raise ValueError("TIFF directory is truncated")
        tag, typ = struct.unpack(endian + "HH", data[pos : pos + 4])
        if tag in seen:
            raise ValueError(f"TIFF tag {tag} appears twice in the directory")
        seen.add(tag)
        if tag in _TIFF_TAGS:
            fmt = _TIFF_TYPE_FORMATS.get(typ)
            if fmt is None:
                raise ValueError(f"TIFF tag {tag} has an unexpected type {typ}")
            (count,) = struct.unpack(endian + count_fmt, data[pos + 4 : pos + 4 + count_size])
            value_at = pos + entry_size - value_size
            if count * struct.calcsize(fmt) > value_size:  # the values live elsewhere: the field holds their offset
                (value_at,) = struct.unpack(endian + ("Q" if big else "I"), data[value_at : value_at + value_size])
                if value_at + struct.calcsize(fmt) > len(data):
                    raise ValueError(f"TIFF tag {tag} points outside the file")
            (found[tag],) = struct.unpack(endian + fmt, data[value_at : value_at + struct.calcsize(fmt)])
            if tag == _TIFF_EXTRA:
                found[tag] = count
        pos += entry_size
    if _TIFF_WIDTH not in found or _TIFF_LENGTH not in found:
        raise ValueError("TIFF without ImageWidth/ImageLength")
    samples = found.get(_TIFF_SAMPLES, 1)
    if not 1 <= samples <= 4:
        raise ValueError(f"TIFF with {samples} samples per pixel")
    bits = found.get(_TIFF_BITS, 1)
    if bits > 16:
        raise ValueError(f"TIFF with {bits} bits per sample (8 or 16 are accepted)")
    cmyk = found.get(_TIFF_PHOTOMETRIC) == 5
    alpha = not cmyk and (samples in (2, 4) or found.get(_TIFF_EXTRA, 0) > 0)
    channels = 3 if cmyk else 4 if samples == 2 else samples
    tile_width, tile_height = found.get(_TIFF_TILE_WIDTH, 0), found.get(_TIFF_TILE_LENGTH, 0)
    return (found[_TIFF_WIDTH], found[_TIFF_LENGTH], channels, alpha, 2 if bits > 8 else 1, tile_width,
            tile_height)


_HEADER_READERS = {"jpeg": _jpeg_header, "png": _png_header, "bmp": _bmp_header, "tiff": _tiff_header}


def read_header(data: bytes, *, name: str = "", what: str = "") -> ImageHeader:
    """Sniff the format and read size, channels and sample depth from the header, without decoding pixels.

    Raises:
        BadImage: empty data, an unsupported format, or a header that cannot be parsed.
    """
    label = what or _label(name)
    if not data:
        raise BadImage(f"{label} is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage(f"{label} has an unsupported format (first bytes {data[:8]!r}); accepted: {', '.join(FORMATS)}")
    try:
        header = ImageHeader(fmt, *_HEADER_READERS[fmt](data))
    except (ValueError, struct.error) as exc:
        raise BadImage(f"{label} is not a valid {fmt.upper()}: {exc}") from exc
    if header.width <= 0 or header.height <= 0:
        raise BadImage(f"{label} has an empty size {header.width}x{header.height}")
    return header


def check_header(data: bytes, *, max_bytes: int, max_pixels: int, name: str = "", allow_alpha: bool = True,
                 what: str = "") -> ImageHeader:
    """Every limit that can be checked before decoding: bytes, pixels, alpha, the decoded buffer and tile sizes.

    The decoded buffer may be at most what an 8-bit RGB image of ``max_pixels`` needs, so 16-bit or
    4-channel images get proportionally fewer pixels; so may a TIFF's tile buffer, whatever the image size.

    Raises:
        BadImage: a limit is exceeded or the header is not readable.
    """
    label = what or _label(name)
    if len(data) > max_bytes:
        raise BadImage(f"{label} is too large: {len(data)} bytes > limit {max_bytes}")
    header = read_header(data, name=name, what=what)
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise BadImage(f"{label} is too large: {header.width}x{header.height} = {pixels} pixels > limit {max_pixels}")
    if header.alpha and not allow_alpha:
        raise BadImage(f"{label} has an alpha channel ({header.channels} channels); send grayscale or RGB without alpha")
    budget = max_pixels * 3
    if header.decoded_bytes > budget:
        raise BadImage(
            f"{label} is too large to decode: {header.width}x{header.height} with {header.channels} channels of "
            f"{8 * header.sample_bytes} bits needs {header.decoded_bytes} bytes > limit {budget} "
            f"(3 bytes per pixel of the {max_pixels}-pixel limit)")
    if header.tile_bytes > budget:
        raise BadImage(
            f"{label} is too large to decode: its {header.tile_width}x{header.tile_height} TIFF tiles need "
            f"{header.tile_bytes} bytes each > limit {budget} (3 bytes per pixel of the {max_pixels}-pixel limit)")
    return header


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
        max_pixels: reject images whose header claims more pixels (or a larger decoded buffer than
            8-bit RGB at this many pixels), before decoding.
        name: shown in error messages (a file name or a request's image id).
        allow_alpha: False rejects images with an alpha channel (from the header) instead of dropping it.

    Raises:
        BadImage: for every input that is not a decodable image within the limits.
    """
    label = _label(name)
    header = check_header(data, max_bytes=max_bytes, max_pixels=max_pixels, name=name, allow_alpha=allow_alpha)
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
