"""`zdm export`: a published version's verified ONNX / OpenVINO conversion, for edge devices and other servers.

The conversion is the classifier's own: :func:`services.classifier.backends.create_backend` builds the
format's backend from the cached conversion (services.classifier.export), verifies it against torch
and converts again if the cached one fails; only then are the cache entry's files exported. So an
export is byte for byte what the classifier serves for that format, and it is shared with the
classifier's cache when both use the same cache folder.

Two destinations:

- ``registry`` (default): into the version's folder, ``<registry>/<name>/<version>/<format>/``, the files'
  sizes and SHA-256 recorded in the manifest's ``exports`` (see :meth:`common.registry.Registry.add_export`
  for how that stays atomic). ONNX Runtime opens ``onnx/model.onnx``; OpenVINO ``openvino/model.xml``.
- ``triton``: a model repository folder elsewhere, ``<out>/<name>/config.pbtxt`` and
  ``<out>/<name>/<version>/model.onnx`` (or ``model.xml`` + ``model.bin``), plus ``labels.txt`` (class
  names, for Triton's classification extension) and ``zdm.json`` (preprocessing, defect class, hashes).
  Triton reads it as it is; OpenVINO Model Server reads the same ``<name>/<version>/`` layout.

Runs in the caller's process, reading and writing the registry directly rather than through a
classifier RPC: an export writes into the registry, which the classifier mounts read-only, and the
conversion's CPU time should not come out of a serving line's budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.errors import InvalidArgument
from common.manifest import WEIGHTS_FILE, ExportedFile, ExportRecord, Manifest
from common.registry import Registry

Format = Literal["onnx", "openvino"]
Layout = Literal["registry", "triton"]
FORMATS: tuple[str, ...] = ("onnx", "openvino")
LAYOUTS: tuple[str, ...] = ("registry", "triton")
# Triton's max_batch_size in config.pbtxt; the exported graphs take any batch.
TRITON_MAX_BATCH = 32


@dataclass(frozen=True)
class ExportResult:
    manifest: Manifest
    record: ExportRecord
    folder: Path  # where the files now are
    reused: bool  # True: the version already had this export with the same files (nothing was written)


def parse_ref(text: str) -> tuple[str, int, str]:
    """``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS`` -> (name, version, alias)."""
    name, _, rest = text.partition(":")
    if not name:
        raise InvalidArgument(f"expected NAME[:VERSION|:ALIAS], got {text!r}")
    if rest.isdigit():
        return name, int(rest), ""
    return name, 0, rest


def export_model(
    registry: Registry,
    cache_dir: Path,
    name: str,
    version: int = 0,
    alias: str = "",
    *,
    fmt: str = "onnx",
    layout: str = "registry",
    output: Path | None = None,
    default_alias: str = "production",
) -> ExportResult:
    """Export one version (pinned, by alias, else the default alias / newest) in ``fmt``.

    Raises:
        NotFound: unknown model, version or alias.
        InvalidArgument: unknown format or layout, or the triton layout without an output folder.
        ExportError: the conversion failed or did not pass verification.
    """
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
    if layout not in LAYOUTS:
        raise InvalidArgument(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
    if layout == "triton" and output is None:
        raise InvalidArgument("the triton layout writes a model repository elsewhere: give an output folder")
    manifest = registry.resolve(name, version, alias, default_alias)
    record, sources = _verified_conversion(registry, manifest, Path(cache_dir), fmt)
    if layout == "registry":
        return _into_registry(registry, manifest, record, sources)
    assert output is not None
    return _into_triton(manifest, record, sources, Path(output))


def _verified_conversion(
    registry: Registry, manifest: Manifest, cache_dir: Path, fmt: str
) -> tuple[ExportRecord, dict[str, Path]]:
    """The record and source files (relative export path -> cached file) of a conversion that passed verification."""
    from common.models.loading import load_published
    from services.classifier import export
    from services.classifier.backends import BackendOptions, create_backend

    size = manifest.preprocessing.image_size
    model = load_published(registry, manifest)
    cache_key = manifest.weights_sha256 or _sha256(registry.path(manifest.name, manifest.version) / WEIGHTS_FILE)
    # fp32 everywhere: the exported weights are fp32 and the check must be the strict one.
    options = BackendOptions(precision="f32", num_threads=1, verify=True)
    kind = "onnxruntime" if fmt == "onnx" else "openvino"
    create_backend(kind, model, size, cache_dir, cache_key, options=options)  # raises unless verified
    if fmt == "onnx":
        artifact = export.cached_onnx(model, size, cache_dir, cache_key)
        files, converter = (export.ONNX_FILE,), export.onnx_entry_name(size)
    else:
        artifact = export.cached_openvino(model, size, cache_dir, cache_key)
        files, converter = export.OPENVINO_FILES, export.openvino_entry_name(size)
    entry = artifact.path.parent
    sources = {f"{fmt}/{f}": entry / f for f in files}
    record = ExportRecord(
        format=fmt,
        files={rel: ExportedFile(size=p.stat().st_size, sha256=_sha256(p)) for rel, p in sources.items()},
        input_name=export.INPUT_NAME,
        output_name=export.OUTPUT_NAME,
        input_shape=[-1, manifest.preprocessing.channels, size, size],
        converter=converter,
    )
    return record, sources


def _into_registry(
    registry: Registry, manifest: Manifest, record: ExportRecord, sources: dict[str, Path]
) -> ExportResult:
    folder = registry.path(manifest.name, manifest.version) / record.format
    existing = manifest.exports.get(record.format)
    if existing is not None and existing.files == record.files and _files_match(folder.parent, existing):
        return ExportResult(manifest, existing, folder, reused=True)
    updated = registry.add_export(manifest.name, manifest.version, record, sources)
    return ExportResult(updated, record, folder, reused=False)


def _files_match(version_dir: Path, record: ExportRecord) -> bool:
    for rel, want in record.files.items():
        path = version_dir / rel
        if not path.is_file() or path.stat().st_size != want.size or _sha256(path) != want.sha256:
            return False
    return True


def triton_config(manifest: Manifest, record: ExportRecord) -> str:
    """config.pbtxt for Triton: ONNX Runtime or OpenVINO backend, dynamic batch up to TRITON_MAX_BATCH."""
    channels, size = record.input_shape[1], record.input_shape[2]
    runtime = 'platform: "onnxruntime_onnx"' if record.format == "onnx" else 'backend: "openvino"'
    return (
        f'name: "{manifest.name}"\n'
        f"{runtime}\n"
        f"max_batch_size: {TRITON_MAX_BATCH}\n"
        f"version_policy: {{ specific: {{ versions: [{manifest.version}] }} }}\n"
        "input [\n"
        f'  {{ name: "{record.input_name}" data_type: TYPE_FP32 dims: [ {channels}, {size}, {size} ] }}\n'
        "]\n"
        "output [\n"
        f'  {{ name: "{record.output_name}" data_type: TYPE_FP32 dims: [ {len(manifest.classes)} ] '
        'label_filename: "labels.txt" }\n'
        "]\n"
    )


def _into_triton(manifest: Manifest, record: ExportRecord, sources: dict[str, Path], output: Path) -> ExportResult:
    """Write ``output/<name>/`` as a whole: built beside it, then renamed over any older one."""
    output.mkdir(parents=True, exist_ok=True)
    final = output / manifest.name
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{manifest.name}-", dir=output))
    try:
        version_dir = tmp / str(manifest.version)
        version_dir.mkdir()
        for rel, source in sources.items():
            shutil.copyfile(source, version_dir / Path(rel).name)
        (tmp / "config.pbtxt").write_text(triton_config(manifest, record))
        (tmp / "labels.txt").write_text("".join(f"{c}\n" for c in manifest.classes))
        sidecar = {
            "model": manifest.name,
            "version": manifest.version,
            "classes": manifest.classes,
            "defect_class": manifest.defect_class,
            "preprocessing": manifest.preprocessing.model_dump(),
            "export": record.model_dump(),
        }
        (tmp / "zdm.json").write_text(json.dumps(sidecar, indent=2))
        for rel, want in record.files.items():
            copied = version_dir / Path(rel).name
            if _sha256(copied) != want.sha256:
                raise InvalidArgument(f"{sources[rel]} changed while it was exported (hash mismatch)")
        old = output / f".old-{manifest.name}-{os.getpid()}"
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(manifest, record, final, reused=False)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
