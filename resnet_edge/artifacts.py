"""The work directory: atomic writes, sha256, and manifest.json.

Every file is written under a temporary name in its final folder and renamed into place, so an
interrupted step never leaves a half file that a later step would trust.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import stat
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from . import __version__, outputs, strictjson
from .errors import BadInput, disk_problem

MANIFEST = "manifest.json"
LOCK = ".resnet-edge.lock"  # held (flock) by the command writing the work dir
# work dirs this process writes: real path -> (the lock's descriptor, the step that took it)
_HELD: dict[str, tuple[int, str]] = {}
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
    """Yield a temporary path whose bytes become `final` when the block succeeds
    (`outputs.written`: a regular file replaced by a rename, a device or pipe written through,
    anything else refused), with a refusal or a full disk said in one line (exit 2)."""
    try:
        with outputs.written(final, temp_prefix(Path(final).name)) as tmp_path:
            yield tmp_path
    except outputs.OutputRefused as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:
        # a library that ran out of disk rarely says so (torch.onnx: "unexpected pos")
        problem = disk_problem(final, exc) if isinstance(exc, (OSError, RuntimeError)) else None
        if problem:
            raise BadInput(problem) from None
        raise


def temp_prefix(name: str) -> str:
    return f".{name}."


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> str:
    """Write `data` atomically; returns its sha256, so nothing reads the file back to hash it."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: str | os.PathLike, data: Any) -> None:
    """Strict JSON: a non-finite number is written as null, never as bare NaN."""
    write_text_atomic(final, strictjson.dumps(data, indent=2) + "\n")


def library_versions() -> dict[str, str]:
    return dict(_versions())


@functools.lru_cache(maxsize=1)  # package metadata does not change while a command runs
def _versions() -> dict[str, str]:
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
    """One model's work directory, described by manifest.json: opened once per command
    (its manifest read, each file hashed once) and handed down, and usable wherever a path to
    the directory is (os.fspath, str, `/`), so a lower layer takes either (`open_dir`)."""

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._hashes: dict[tuple, str] = {}
        manifest = self.path / MANIFEST
        self.manifest: dict[str, Any] = {"tool": "resnet-edge", "files": {}}
        if manifest.exists():
            try:  # a regular file of bounded size: a FIFO or /dev/zero in its place is refused
                raw = strictjson.read_regular(manifest, 256 << 20, "work dir manifest", "no manifest is")
                self.manifest = json.loads(raw.decode("utf-8"))
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                raise BadInput(f"{manifest} is damaged ({exc}); delete it and run export again") from None
            if not (isinstance(self.manifest, dict) and isinstance(self.manifest.get("files"), dict)
                    and isinstance(self.manifest.get("complete", {}), dict)):
                raise BadInput(f"{manifest} is not a resnet-edge work directory manifest; delete it "
                               "and run export again")

    def file(self, name: str) -> Path:
        return self.path / name

    def sha256(self, name: str) -> str:
        """sha256 of a work-dir file, hashed once per command while it is unchanged."""
        path = self.file(name)
        info = path.stat()
        key = (name, info.st_size, info.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = sha256_file(path)
        return self._hashes[key]

    def remember(self, name: str, digest: str) -> None:
        """The sha256 of a file this command just wrote from bytes it hashed itself."""
        info = self.file(name).stat()
        self._hashes[(name, info.st_size, info.st_mtime_ns)] = digest

    # A step's outputs are trusted only as a set, and only once the step has completed:
    # `complete` records the set last, with the sha256 of every output and of every work-dir
    # file the step was made from. Until then the last completed set stays as it was: each of
    # its files is trusted while its bytes are the recorded ones, so an interrupted re-run
    # loses only the files it had already replaced (every file is replaced whole, by a rename).

    def begin(self, step: str, writes: list[str]) -> None:
        """`step` is about to rewrite `writes`: the work dir is this process's to write until
        the step completes (another command writing it is refused, one reading it is told who
        writes); temporary files an earlier killed run left are removed."""
        self.hold(step)
        for name in (*writes, MANIFEST):  # the manifest too: a kill can land on its rename
            for leftover in self.path.glob(f"{temp_prefix(name)}*.tmp"):
                leftover.unlink(missing_ok=True)

    def complete(self, step: str, outputs: list[str], made_from: list[str], remake: str) -> None:
        self.manifest.setdefault("complete", {})[step] = {
            "outputs": {name: self.sha256(name) for name in outputs},
            "made_from": {name: self.sha256(name) for name in made_from},
            "remake": remake,
            "completed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.save()
        held = _HELD.get(os.path.realpath(self.path))
        if held and held[1] == step:  # a step inside a longer hold (pipeline's) keeps it
            release(self.path)

    def hold(self, step: str) -> None:
        """Take the work dir's lock for writing, or BadInput naming the command that has it.
        The lock is an flock, so a killed command never leaves it held."""
        key = os.path.realpath(self.path)
        if key in _HELD:
            return
        fd = _open_lock(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise BadInput(f"{holder} is writing {self.path} now; wait for it to finish (or stop "
                           "it), or give this run another work dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "step": step, "command": _command(),
                                 "since": _dt.datetime.now().isoformat(timespec="seconds")}).encode())
        _HELD[key] = (fd, step)

    def check_not_written(self) -> None:
        """BadInput naming the command writing this work dir now, if another one is: what it
        has half-written is neither trusted nor broken yet, so a reader is told to wait."""
        if os.path.realpath(self.path) in _HELD or not os.path.lexists(self.path / LOCK):
            return
        fd = _open_lock(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise BadInput(f"{_holder(fd)} is writing {self.path} now; run this again when it "
                           "has finished") from None
        finally:
            os.close(fd)

    def vouch(self, name: str, remake: str) -> Path:
        """`name`, if a completed step made it, it is unchanged since, and what it was made from
        is unchanged too; otherwise one line naming the file and the command that remakes it."""
        path = self.file(name)
        self.check_not_written()
        record = next((r for r in self.manifest.get("complete", {}).values()
                       if isinstance(r, dict) and name in r.get("outputs", {})), None)
        if record is None:
            raise BadInput(f"{path} was not made by a completed resnet-edge run (interrupted, or "
                           f"copied in by hand); remake it with `{remake}`")
        remake = record.get("remake", remake)
        if not path.exists():
            raise BadInput(f"{path} is missing; remake it with `{remake}`")
        if self.sha256(name) != record["outputs"][name]:
            rewritten = (self.manifest.get("files", {}).get(name) or {}).get("sha256") == self.sha256(name)
            said = ("was rewritten by a run that did not complete (interrupted)" if rewritten
                    else "changed after resnet-edge wrote it")
            raise BadInput(f"{path} {said}; remake it with `{remake}`")
        for source, digest in record.get("made_from", {}).items():
            if not self.file(source).exists() or self.sha256(source) != digest:
                raise BadInput(f"{path} is stale: it was made from an earlier {source}; remake it "
                               f"with `{remake}`")
        return path

    def is_fresh(self, name: str, inputs: dict[str, Any], options: dict[str, Any]) -> bool:
        """True when `name` exists, is unchanged since recorded, and was made from the same
        inputs with the same options: the step that makes it can be skipped."""
        entry = self.manifest["files"].get(name)
        target = self.file(name)
        return (entry is not None and target.exists()
                and entry.get("inputs") == _plain(inputs) and entry.get("options") == _plain(options)
                and entry.get("sha256") == self.sha256(name))

    def record(self, name: str, *, inputs: dict[str, Any], options: dict[str, Any],
               command: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        target = self.file(name)
        entry = {
            "sha256": self.sha256(name),
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
                and all((self.path / name).exists() and self.sha256(name) == digest
                        for name, digest in entry["outputs"].items()))

    def record_step(self, step: str, key: dict[str, Any], outputs: list[str]) -> None:
        self.manifest.setdefault("steps", {})[step] = {
            "key": _plain(key), "outputs": {name: self.sha256(name) for name in outputs}}
        self.save()

    def forget_step(self, step: str) -> None:
        if self.manifest.get("steps", {}).pop(step, None) is not None:
            self.save()

    def set(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)


def release(workdir: str | os.PathLike | None = None) -> None:
    """Let go of the lock on `workdir` (every work dir this process writes, when None): a
    completed step, or a command or API call that ended, failed or not."""
    for key in [k for k in _HELD if workdir is None or k == os.path.realpath(workdir)]:
        os.close(_HELD.pop(key)[0])


def _open_lock(folder: Path, flags: int) -> int:
    """The lock file, opened only as the regular file it must be: never through a link (a
    writer truncates it: a link to /etc/passwd planted in a work dir must not be followed) and
    never waiting on a FIFO put in its place."""
    path = folder / LOCK
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        said = "is a link" if exc.errno == errno.ELOOP else exc.strerror
        raise BadInput(f"cannot use {path} ({said}); remove it, or choose another work dir") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(f"{path} is not a regular file; remove it, or choose another work dir")
    return fd


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        held = json.loads(os.read(fd, 4096).decode("utf-8"))
        return (f"another resnet-edge run ({held['step']}: {held['command'][:200]}, pid {held['pid']}, "
                f"since {held['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another resnet-edge run"


def _command() -> str:
    """What a person would recognise in `ps`: the command line, or the program that called the API."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c") else "python"
    return " ".join(["resnet-edge", *sys.argv[1:]]) if "resnet" in program or program == "__main__.py" \
        else f"{program}, through the Python API"


def calibrate_command(workdir, options: dict, recipe: str = "tensorrt") -> str:
    """The command that calibrates again as this run did: its data above all (without --data a
    model trained here calibrates on its own training set, not the images used before)."""
    import shlex
    line = ["resnet-edge", "calibrate", str(workdir), "--data", options["data"],
            "--samples", str(options["samples"]), "--method", options["method"]]
    return shlex.join(line + (["--recipe", recipe] if recipe != "tensorrt" else []))


def open_dir(workdir: "str | os.PathLike | WorkDir") -> WorkDir:
    """The work directory a caller already opened, or opened now from its path."""
    return workdir if isinstance(workdir, WorkDir) else WorkDir(workdir)


def _plain(data: Any) -> Any:
    """As it reads back from JSON (tuples become lists), so recorded and new values compare."""
    return json.loads(json.dumps(data))
