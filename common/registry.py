"""Model registry on a shared volume: <root>/<name>/<version>/{model.safetensors, manifest.json}.

Publishing writes into a temporary folder and renames it into place, so a reader never sees a
half-written version; a version folder without manifest.json is ignored. Aliases live in
<root>/<name>/aliases.json, rewritten atomically under a file lock.

Names come from requests, so every path is built by :meth:`Registry._model_dir`, which checks the
name against ``NAME_PATTERN`` and confirms that the resolved folder (symlinks included) is a direct
child of the root: ``/abs/path`` and ``../x`` are refused before any file is touched. Weights are
verified against the manifest's ``weights_sha256`` on every load (:class:`IntegrityError`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from common.errors import InvalidArgument, NotFound, Unavailable
from common.manifest import MANIFEST_FILE, WEIGHTS_FILE, ExplanationDefaults, ExportRecord, Manifest

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ALIASES_FILE = "aliases.json"


class IntegrityError(Unavailable):
    """A version's weights do not match its manifest (corrupt, truncated or replaced): it is not served."""


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value) or value.isdigit() or value in (".", ".."):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidArgument(
            f"invalid {kind} {shown!r}: use letters, digits, '_', '.', '-' (not only digits, at most 100)"
        )
    return value


@dataclass(frozen=True)
class VerifiedWeights:
    """A version's tensors and the SHA-256 of the bytes they were read from (matches the manifest)."""

    state_dict: dict[str, torch.Tensor]
    sha256: str


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reading -------------------------------------------------------------------------------
    def _model_dir(self, name: str) -> Path:
        """``<root>/<name>`` for a valid name whose resolved folder is a direct child of the root."""
        check_name("model name", name)
        root = self.root.resolve()
        folder = (root / name).resolve()
        if folder.parent != root:  # a symlinked model folder pointing elsewhere
            raise InvalidArgument(f"model {name!r} is not inside the registry")
        return folder

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and NAME_PATTERN.match(p.name) and not p.name.isdigit())

    def versions(self, name: str) -> list[int]:
        folder = self._model_dir(name)
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file()
        )

    def path(self, name: str, version: int) -> Path:
        if not isinstance(version, int) or version <= 0:
            raise InvalidArgument(f"version must be a positive integer, got {version!r}")
        return self._model_dir(name) / str(version)

    def manifest(self, name: str, version: int) -> Manifest:
        file = self.path(name, version) / MANIFEST_FILE
        if not file.is_file():
            raise NotFound(f"model {name!r} has no version {version} (versions: {self.versions(name)})")
        return Manifest.model_validate_json(file.read_text())

    def aliases(self, name: str) -> dict[str, int]:
        file = self._model_dir(name) / ALIASES_FILE
        if not file.is_file():
            return {}
        return {k: int(v) for k, v in json.loads(file.read_text()).items()}

    def aliases_of(self, name: str, version: int) -> list[str]:
        return sorted(a for a, v in self.aliases(name).items() if v == version)

    def resolve(self, name: str, version: int = 0, alias: str = "", default_alias: str = "production") -> Manifest:
        """version > 0 wins; else alias; else default_alias when it exists; else the newest version."""
        if not name:
            raise InvalidArgument("a model name is required")
        versions = self.versions(name)
        if not versions:  # other models' names are not listed: ListModels is the place for that
            raise NotFound(f"unknown model {name!r}")
        if version:
            return self.manifest(name, version)
        aliases = self.aliases(name)
        if alias:
            if alias not in aliases:
                raise NotFound(f"model {name!r} has no alias {alias!r} (aliases: {sorted(aliases) or 'none'})")
            return self.manifest(name, aliases[alias])
        if default_alias and default_alias in aliases:
            return self.manifest(name, aliases[default_alias])
        return self.manifest(name, versions[-1])

    def newest(self) -> Manifest | None:
        """The most recently published version of any model."""
        best: Manifest | None = None
        for name in self.names():
            versions = self.versions(name)
            if versions:
                candidate = self.manifest(name, versions[-1])
                if best is None or candidate.created_at > best.created_at:
                    best = candidate
        return best

    def load_state_dict(self, name: str, version: int) -> dict[str, torch.Tensor]:
        return self.load_weights(self.manifest(name, version)).state_dict

    def load_weights(self, manifest: Manifest) -> VerifiedWeights:
        """Read a version's weights once, check their SHA-256 against the manifest, then parse them.

        Raises:
            IntegrityError: no recorded hash, a hash mismatch, or a file safetensors cannot parse.
            NotFound: the weights file is missing.
        """
        label = f"{manifest.name}:{manifest.version}"
        file = self.path(manifest.name, manifest.version) / WEIGHTS_FILE
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"model {label} has no weights file") from None
        actual = hashlib.sha256(data).hexdigest()
        if not manifest.weights_sha256:
            raise IntegrityError(f"model {label}: the manifest records no weights_sha256; refusing unverified weights")
        if actual != manifest.weights_sha256:
            raise IntegrityError(f"model {label}: weights SHA-256 {actual[:12]}... does not match the manifest's "
                                 f"{manifest.weights_sha256[:12]}... (corrupt or replaced file); not loaded")
        try:
            state = load_safetensors(data)
        except (SafetensorError, ValueError) as exc:
            raise IntegrityError(f"model {label}: weights are not a valid safetensors file: {exc}") from exc
        return VerifiedWeights(state, actual)

    # -- writing -------------------------------------------------------------------------------
    def publish(self, manifest: Manifest, state_dict: Mapping[str, torch.Tensor], *,
                extra_files: Mapping[str, bytes] | None = None, aliases: list[str] | None = None) -> Manifest:
        """Write weights + manifest (+ extra files) atomically as the next version; returns the manifest."""
        name = check_name("model name", manifest.name)
        for alias in aliases or []:
            check_name("alias", alias)
        folder = self._model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            manifest = manifest.model_copy(update={"weights_sha256": _sha256(tmp / WEIGHTS_FILE)})
            for filename, data in (extra_files or {}).items():
                _fsync_write(tmp / filename, data)
            while True:
                version = (max(self._all_version_dirs(folder), default=0)) + 1
                manifest = manifest.model_copy(update={"version": version})
                _fsync_write(tmp / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
                try:
                    os.rename(tmp, folder / str(version))
                    break
                except OSError as exc:  # another publisher took this version first
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for alias in aliases or []:
            self.set_alias(name, alias, manifest.version)
        return manifest

    @staticmethod
    def _all_version_dirs(folder: Path) -> list[int]:
        return [int(p.name) for p in folder.iterdir() if p.name.isdigit()]

    def set_alias(self, name: str, alias: str, version: int) -> None:
        check_name("alias", alias)
        if version not in self.versions(name):
            raise NotFound(f"model {name!r} has no version {version} (versions: {self.versions(name)})")
        with self._locked(name):
            aliases = self.aliases(name)
            aliases[alias] = version
            self._replace(self._model_dir(name) / ALIASES_FILE, json.dumps(aliases, indent=2).encode())

    def update_explanation(self, name: str, version: int, defaults: ExplanationDefaults) -> Manifest:
        """Store new explanation defaults in an existing version's manifest (atomic rewrite)."""
        with self._locked(name):
            manifest = self.manifest(name, version).model_copy(update={"explanation": defaults})
            self._replace(self.path(name, version) / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
        return manifest

    def add_export(self, name: str, version: int, record: ExportRecord, sources: Mapping[str, Path]) -> Manifest:
        """Add the files of ``record`` (relative path -> source file) to a published version, then record them.

        The version folder never shows a half-written export: the files are copied into a temporary
        folder beside it, fsynced, checked against the record's hashes and renamed into place as one
        folder (replacing an older export of the same format, which is removed after); only then is the
        manifest rewritten atomically with the record. A reader trusts the files the manifest lists.
        """
        folders = {Path(rel).parts[0] for rel in record.files}
        if set(sources) != set(record.files) or len(folders) != 1 or any(len(Path(r).parts) != 2 for r in record.files):
            raise InvalidArgument("an export's files must all lie in one folder of the version: <folder>/<file>")
        (folder,) = folders
        check_name("export folder", folder)
        version_dir = self.path(name, version)
        with self._locked(name):
            manifest = self.manifest(name, version)  # NotFound for an unknown model or version
            tmp = version_dir / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
            old = version_dir / f".old-{uuid.uuid4().hex}"
            try:
                for rel, source in sources.items():
                    target = tmp / Path(rel).name
                    shutil.copyfile(source, target)
                    with open(target, "rb") as fh:
                        os.fsync(fh.fileno())
                    want = record.files[rel]
                    if target.stat().st_size != want.size or _sha256(target) != want.sha256:
                        raise InvalidArgument(f"{source} changed while it was exported (hash mismatch)")
                final = version_dir / folder
                if final.exists():
                    os.rename(final, old)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
            exports = {**manifest.exports, record.format: record}
            manifest = manifest.model_copy(update={"exports": exports})
            self._replace(version_dir / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
        return manifest

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        folder = self._model_dir(name)
        if not folder.is_dir():
            raise NotFound(f"unknown model {name!r}")
        lock_path = folder / ".lock"
        with open(lock_path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        _fsync_write(tmp, data)
        os.replace(tmp, path)
