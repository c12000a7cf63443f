"""Convert an eval-mode torch classifier to OpenVINO IR and ONNX, with an on-disk cache.

Both formats take one float32 input of shape ``N x 3 x S x S`` (N dynamic) and give float32 logits
``N x C``. One trace serves both: the model is exported to ONNX with the TorchScript exporter and
OpenVINO reads that ONNX (OpenVINO's own PyTorch frontend is the fallback).

Conversions are cached under ``cache_dir / cache_key / <entry>`` where ``cache_key`` is a content
hash of the checkpoint (the caller computes it) and ``<entry>`` names the format, the input size and
the converter's version, so upgrading a converter never reuses an old artifact.

An entry is built in a temporary directory beside its final place and renamed into place only when
complete (a directory rename is atomic on POSIX), so a crash mid-conversion leaves at most a
``.tmp-*`` directory that readers never look at. The last file written into an entry is
``complete.json`` with each file's size and SHA-256; an entry whose files do not match it (truncated,
edited, partly deleted) is rebuilt. A ``flock`` per entry keeps two processes sharing a cache from
converting the same model at once.

Verification outcomes (:mod:`services.classifier.verification`) are cached beside the conversions,
under ``cache_dir / cache_key / verified / <sha256 of the outcome's inputs>.json``: the converted
files' digest, the runtime settings and version, the CPU and the verification set's identity. Each
record is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import torch
from torch import nn

from common.errors import ZdmError

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MARKER_FILE = "complete.json"
OPENVINO_FILES = ("model.xml", "model.bin")
ONNX_FILE = "model.onnx"
# Traced with a batch of 2 so that no op gets specialised to a batch of one (squeeze and friends).
_EXAMPLE_BATCH = 2
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HASH_CHUNK = 1 << 20


class ExportError(ZdmError):
    """A model could not be converted (or the converted model is unusable). Internal to the service."""

    code = grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class Artifact:
    """A converted model on disk.

    Attributes:
        path: The file a runtime opens (``model.xml`` for OpenVINO, ``model.onnx`` for ONNX).
        from_cache: True when the entry already existed and was reused, False when just converted.
        digest: SHA-256 of the entry's marker, which lists every file's hash: identifies the conversion.
    """

    path: Path
    from_cache: bool
    digest: str = ""


# --------------------------------------------------------------------------------------------------
# Conversions (in memory)
# --------------------------------------------------------------------------------------------------


def _check_model(model: nn.Module, image_size: int) -> torch.Tensor:
    """Reject what would convert wrongly; return a deterministic example input."""
    if model.training:
        raise ValueError("export needs an eval-mode model (call model.eval() first)")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    for p in model.parameters():
        if p.device.type != "cpu":
            raise ValueError(f"export needs a model on the CPU, found a parameter on {p.device}")
        break
    gen = torch.Generator().manual_seed(0)
    return torch.randn(_EXAMPLE_BATCH, 3, image_size, image_size, generator=gen)


def to_openvino(model: nn.Module, image_size: int) -> ov.Model:
    """Convert ``model`` to an in-memory ``openvino.Model`` with a dynamic batch dimension.

    Goes through ONNX (the graph ONNX Runtime would run, and about three times cheaper than
    OpenVINO's PyTorch frontend, which traces the model twice to check the trace). If the ONNX route
    fails, for an op the exporter or OpenVINO's ONNX frontend lacks, OpenVINO's PyTorch frontend
    converts the model directly.

    Raises:
        ExportError: both routes failed.
    """
    import openvino as ov

    _check_model(model, image_size)
    try:
        om = ov.convert_model(io.BytesIO(to_onnx_bytes(model, image_size)))
    except Exception as e:
        logger.warning("ONNX route to OpenVINO failed (%s: %s); trying OpenVINO's PyTorch frontend", type(e).__name__, e)
        om = _openvino_from_torch(model, image_size)
    _check_single_io(len(om.inputs), len(om.outputs), "OpenVINO")
    return om


def _openvino_from_torch(model: nn.Module, image_size: int) -> ov.Model:
    """OpenVINO's PyTorch frontend on our own trace (no check run: that would trace twice more)."""
    import openvino as ov

    example = _check_model(model, image_size)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
            return ov.convert_model(traced, example_input=example, input=[(-1, 3, image_size, image_size)])
    except Exception as e:
        raise ExportError(f"OpenVINO conversion failed: {type(e).__name__}: {e}") from e


def write_onnx(model: nn.Module, image_size: int, f: str | Path | io.BytesIO) -> None:
    """Export ``model`` to ONNX (opset ``ONNX_OPSET``, dynamic batch axis) into a path or a buffer.

    Uses the TorchScript-based exporter (``dynamo=False``): the torch.export-based one needs
    ``onnxscript``, which we do not ship.

    Raises:
        ExportError: the export failed.
    """
    example = _check_model(model, image_size)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                f,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
            )
    except Exception as e:
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from e


def to_onnx_bytes(model: nn.Module, image_size: int) -> bytes:
    """Export ``model`` to an ONNX model held in memory (see ``write_onnx``)."""
    buf = io.BytesIO()
    write_onnx(model, image_size, buf)
    data = buf.getvalue()
    _validate_onnx(data)
    return data


def _check_single_io(n_in: int, n_out: int, what: str) -> None:
    if n_in != 1 or n_out != 1:
        raise ExportError(f"{what} model has {n_in} inputs and {n_out} outputs; expected one of each")


def _validate_onnx(model: str | Path | bytes) -> None:
    import onnx

    try:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ExportError(f"exported ONNX model is invalid: {type(e).__name__}: {e}") from e
    _check_single_io(len(proto.graph.input), len(proto.graph.output), "ONNX")


def _validate_openvino(xml: Path) -> None:
    import openvino as ov

    try:
        om = ov.Core().read_model(xml)
    except Exception as e:
        raise ExportError(f"saved OpenVINO IR is unreadable: {type(e).__name__}: {e}") from e
    _check_single_io(len(om.inputs), len(om.outputs), "OpenVINO")


# --------------------------------------------------------------------------------------------------
# Cached conversions
# --------------------------------------------------------------------------------------------------


def openvino_entry_name(image_size: int) -> str:
    import openvino as ov

    return _sanitize(f"openvino-s{image_size}-ov{ov.get_version().split('-')[0]}")


def onnx_entry_name(image_size: int) -> str:
    return _sanitize(f"onnx-s{image_size}-op{ONNX_OPSET}-torch{torch.__version__}")


def cached_openvino(model: nn.Module, image_size: int, cache_dir: Path, cache_key: str) -> Artifact:
    """Return the cached OpenVINO IR of ``model``, converting (and caching) it first if needed.

    Weights are saved in fp32 (``compress_to_fp16=False``): the precision is chosen at compile time.
    """

    def write(tmp: Path) -> None:
        import openvino as ov

        om = to_openvino(model, image_size)
        ov.save_model(om, tmp / OPENVINO_FILES[0], compress_to_fp16=False)
        _validate_openvino(tmp / OPENVINO_FILES[0])

    entry = _cached_entry(cache_dir, cache_key, openvino_entry_name(image_size), OPENVINO_FILES, write)
    return Artifact(path=entry.path / OPENVINO_FILES[0], from_cache=entry.from_cache, digest=entry.digest)


def cached_onnx(model: nn.Module, image_size: int, cache_dir: Path, cache_key: str) -> Artifact:
    """Return the cached ONNX export of ``model``, exporting (and caching) it first if needed."""

    def write(tmp: Path) -> None:
        write_onnx(model, image_size, tmp / ONNX_FILE)
        _validate_onnx(tmp / ONNX_FILE)

    entry = _cached_entry(cache_dir, cache_key, onnx_entry_name(image_size), (ONNX_FILE,), write)
    return Artifact(path=entry.path / ONNX_FILE, from_cache=entry.from_cache, digest=entry.digest)


def invalidate(artifact: Artifact) -> None:
    """Remove the cache entry holding ``artifact`` (e.g. it loaded but computes the wrong thing).

    Safe while a runtime still uses the old files: they are unlinked, never rewritten in place
    (OpenVINO maps ``model.bin`` into memory, so truncating it under a live model would crash it).
    """
    entry = artifact.path.parent
    with _locked(entry.parent / f".lock-{entry.name}"):
        shutil.rmtree(entry, ignore_errors=True)
    logger.warning("removed cache entry %s", entry)


VERIFIED_DIR = "verified"


def outcome_path(cache_dir: Path, cache_key: str, inputs: str) -> Path:
    """Where the verification outcome determined by ``inputs`` (a canonical string) is cached."""
    check_cache_key(cache_key)
    return Path(cache_dir) / cache_key / VERIFIED_DIR / f"{hashlib.sha256(inputs.encode()).hexdigest()}.json"


def read_outcome(path: Path) -> dict | None:
    """The cached outcome at ``path``; None when there is none or it is unreadable (it is measured again)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable verification record %s: %s", path, e)
        return None
    return record if isinstance(record, dict) else None


def write_outcome(path: Path, record: dict) -> None:
    """Write ``record`` atomically (temporary file, fsync, rename): readers see all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def check_cache_key(cache_key: str) -> None:
    """A cache key becomes a directory name: allow only a safe, short subset of characters."""
    if not _KEY_RE.match(cache_key):
        raise ValueError(f"cache key must match {_KEY_RE.pattern}, got {cache_key!r}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _entry_is_complete(entry: Path, files: tuple[str, ...]) -> bool:
    """True when the marker exists and every listed file matches its recorded size and hash."""
    try:
        marker = json.loads((entry / MARKER_FILE).read_text())
        recorded = marker["files"]
        for name in files:
            want = recorded[name]
            path = entry / name
            if path.stat().st_size != want["size"] or _sha256(path) != want["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _write_marker(entry: Path, files: tuple[str, ...]) -> None:
    """Fsync every file, then write the marker that declares them complete (last)."""
    recorded = {}
    for name in files:
        path = entry / name
        with path.open("rb") as f:
            os.fsync(f.fileno())
        recorded[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    marker = entry / MARKER_FILE
    with marker.open("w") as f:
        json.dump({"files": recorded}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclass(frozen=True)
class _Entry:
    path: Path
    from_cache: bool

    @property
    def digest(self) -> str:
        return _sha256(self.path / MARKER_FILE)


def _cached_entry(
    cache_dir: Path,
    cache_key: str,
    entry_name: str,
    files: tuple[str, ...],
    write: Callable[[Path], None],
) -> _Entry:
    """Reuse ``cache_dir/cache_key/entry_name`` if complete, else build it with ``write(tmp_dir)``."""
    check_cache_key(cache_key)
    key_dir = Path(cache_dir) / cache_key
    final = key_dir / entry_name
    if _entry_is_complete(final, files):
        return _Entry(final, from_cache=True)

    key_dir.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".tmp-{entry_name}-"
    with _locked(key_dir / f".lock-{entry_name}"):
        # Another process may have finished the same conversion while we waited for the lock.
        if _entry_is_complete(final, files):
            return _Entry(final, from_cache=True)
        if final.exists():
            logger.warning("cache entry %s is incomplete or corrupt; converting again", final)
            shutil.rmtree(final)
        # We hold the lock, so any temporary directory for this entry is a crashed writer's leftover.
        for stale in key_dir.glob(tmp_prefix + "*"):
            logger.info("removing leftover conversion directory %s", stale)
            shutil.rmtree(stale, ignore_errors=True)

        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=key_dir))
        try:
            write(tmp)
            _write_marker(tmp, files)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(key_dir)
    logger.info("converted model cached at %s", final)
    return _Entry(final, from_cache=False)
