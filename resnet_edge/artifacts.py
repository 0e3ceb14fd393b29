"""The work directory: atomic writes, sha256, and manifest.json.

Every file is written under a temporary name in its final folder and renamed into place, so an
interrupted step never leaves a half file that a later step would trust.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import BadInput

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
_TRACKED_PACKAGES = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                     "tensorrt", "numpy")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are ordinary files
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: str | os.PathLike, data: Any) -> None:
    write_text_atomic(final, json.dumps(data, indent=2, sort_keys=False) + "\n")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "resnet-edge": __version__}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it is writable, or fail with exit 2 before any work."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise BadInput(f"output directory {path} is not writable ({exc.strerror}); "
                       "choose another with --out") from None
    return path


class WorkDir:
    """One model's work directory, described by manifest.json."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        self.manifest: dict[str, Any] = (json.loads(manifest.read_text()) if manifest.exists()
                                         else {"tool": "resnet-edge", "files": {}})

    def file(self, name: str) -> Path:
        return self.path / name

    def is_fresh(self, name: str, inputs: dict[str, Any], options: dict[str, Any]) -> bool:
        """True when `name` exists, is unchanged since recorded, and was made from the same
        inputs with the same options: the step that makes it can be skipped."""
        entry = self.manifest["files"].get(name)
        target = self.file(name)
        return (entry is not None and target.exists()
                and entry.get("inputs") == _plain(inputs) and entry.get("options") == _plain(options)
                and entry.get("sha256") == sha256_file(target))

    def record(self, name: str, *, inputs: dict[str, Any], options: dict[str, Any],
               command: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        target = self.file(name)
        entry = {
            "sha256": sha256_file(target),
            "bytes": target.stat().st_size,
            "command": command or " ".join(["resnet-edge", *sys.argv[1:]]),
            "inputs": _plain(inputs),
            "options": _plain(options),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        self.manifest["files"][name] = entry
        self.manifest["versions"] = library_versions()
        self.save()
        return entry

    def step_fresh(self, step: str, key: dict[str, Any]) -> bool:
        """True when `step` last ran with the same key and its outputs are unchanged since."""
        entry = self.manifest.get("steps", {}).get(step)
        return (entry is not None and entry["key"] == _plain(key)
                and all((self.path / name).exists() and sha256_file(self.path / name) == digest
                        for name, digest in entry["outputs"].items()))

    def record_step(self, step: str, key: dict[str, Any], outputs: list[str]) -> None:
        self.manifest.setdefault("steps", {})[step] = {
            "key": _plain(key), "outputs": {name: sha256_file(self.path / name) for name in outputs}}
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)


def _plain(data: Any) -> Any:
    """As it reads back from JSON (tuples become lists), so recorded and new values compare."""
    return json.loads(json.dumps(data))
