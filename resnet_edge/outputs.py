"""Where an output path leads, and writing it without replacing what it names.

A regular file (or a link to one) is written under a temporary name beside it and renamed into
place, so no reader ever sees half a file. A character device or a pipe (/dev/null, /dev/stdout,
a shell's `>(cmd)`) is what a user names to throw the output away or stream it: it is written
through, appended, never replaced (as root a rename would turn /dev/null into a regular file for
the whole machine). A folder, block device or socket, a new file under /dev or /proc, or a link
there that leads nowhere is refused in one line.

Standard library only: the deploy bundle carries this file in lib/ for verify.py's report.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterator

# a link into these leads to a stream (/dev/stdout -> /proc/self/fd/1), even when the shell
# redirected that stream to a regular file, which a rename would cut off from the shell;
# /dev/shm is a file system of ordinary files (a CI job's scratch), not of devices
STREAM_ROOTS = ("/dev/", "/proc/")
FILE_ROOTS = ("/dev/shm/",)
_UMASK = os.umask(0)
os.umask(_UMASK)


# what a work dir, run folder or device folder keeps that no report may replace: models,
# engines, caches and the manifests naming them (a report beside them, parity.json, is fine)
ARTIFACTS = ("manifest.json", "model.*", "*.onnx", "*.pt", "*.pth", "*.engine", "*.plan",
             "*.cache", "calibration*", "history.json", "bundle.json", "thresholds.json",
             "*.tar.gz", "*.key", "*.pub")


class OutputRefused(ValueError):
    """An output path that names something no file may replace; the message is one line."""


def real_path(path: str | os.PathLike) -> str:
    """Where a path leads, every link followed; POSIX keeps a leading `//`, which names the
    same root on Linux."""
    real = os.path.realpath(path)
    return "/" + real.lstrip("/") if real.startswith("//") else real


def _under(real: str, roots: tuple) -> bool:
    return any(real == root.rstrip("/") or real.startswith(root) for root in roots)


def output_target(path: str | os.PathLike) -> tuple[bool, Path]:
    """(True, the device or pipe to write through) or (False, the regular file to create or
    replace, reached through any links)."""
    path = Path(path)
    hops, link = [os.path.abspath(path)], path
    while link.is_symlink() and len(hops) < 40:
        link = Path(os.path.join(os.path.dirname(os.path.abspath(link)), os.readlink(link)))
        hops.append(os.path.abspath(link))
    hops.append(real_path(path))  # a linked folder on the way (d -> /dev) leads there too
    hops = ["/" + hop.lstrip("/") for hop in hops]  # `//dev/x` is /dev/x
    via_stream_root = any(_under(hop, STREAM_ROOTS) and not _under(hop, FILE_ROOTS) for hop in hops)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # the folder's own check says more
        if via_stream_root:
            raise OutputRefused(f"{path} does not exist, and no file is made under /dev or /proc; "
                                "give a file name elsewhere") from None
        return False, Path(os.path.realpath(path))
    except OSError as exc:
        raise OutputRefused(f"cannot write {path}: {exc.strerror}") from None
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or (stat.S_ISREG(mode) and via_stream_root):
        return True, path
    if stat.S_ISREG(mode):
        return False, Path(os.path.realpath(path))
    kind = ("a folder" if stat.S_ISDIR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise OutputRefused(f"{path} is {kind}; give a file name")


def is_stream(path: str | os.PathLike) -> bool:
    """Whether an output path names a device or pipe (written through, nothing made beside it)."""
    return output_target(path)[0]


@contextlib.contextmanager
def written(final: str | os.PathLike, prefix: str = ".") -> Iterator[Path]:
    """Yield a temporary path; when the block succeeds its bytes become `final` as the module
    docstring says. The temporary file lies beside a regular file (a rename stays on one file
    system) and in the temporary folder for a stream."""
    stream, target = output_target(final)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=None if stream else target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if stream:
            write_through(tmp_path, final)
        else:
            # mkstemp makes 0600, and so do libraries that write atomically themselves
            # (replacing tmp_path with their own temporary file); outputs are ordinary files
            os.chmod(tmp_path, 0o666 & ~_UMASK)
            os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


_HELD: dict = {}  # a pipe's path -> a write end opened when the command started
READER_GRACE_S = 2.0  # a reader started beside the command may open its end a moment later


def hold_pipe(path: str | os.PathLike) -> None:
    """An output that is a pipe: refused now, before the work, when nothing reads it, and held
    open until its report is written, so a reader that came for it does not see the end of the
    stream first (a probe closed at once would end `>(jq .)` before the report came)."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode) or real_path(path) in _HELD:
            return
    except OSError:  # not there yet: a file to create, as output_target said
        return
    deadline = time.monotonic() + READER_GRACE_S
    while True:
        try:
            _HELD[real_path(path)] = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            return
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise OutputRefused(f"cannot write {path}: {exc.strerror}") from None
            if time.monotonic() > deadline:
                raise OutputRefused(f"{path} is a pipe that nothing reads; start its reader "
                                    "first") from None
            time.sleep(0.05)


def write_through(data: Path, stream: str | os.PathLike) -> None:
    """Copy the file `data` into a device or pipe opened as it is: appended, never created or
    truncated; a pipe that nothing reads is refused now rather than waited on."""
    held = _HELD.pop(real_path(stream), None)
    try:
        fd = os.open(stream, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    except OSError as exc:
        if held is not None:
            os.close(held)
        if exc.errno == errno.ENXIO:
            raise OutputRefused(f"{stream} is a pipe that nothing reads; start its reader first") from None
        raise OutputRefused(f"cannot write {stream}: {exc.strerror}") from None
    try:
        os.set_blocking(fd, True)
        with open(data, "rb") as source, open(fd, "wb", closefd=False) as sink:
            shutil.copyfileobj(source, sink)
    except OSError as exc:
        raise OutputRefused(f"cannot write {stream}: {exc.strerror}") from None
    finally:
        os.close(fd)
        if held is not None:
            os.close(held)


def _identity(path: str | os.PathLike):
    """(device, inode) of an existing file: one file, whatever links or hard links name it."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _manifest_names(folder: str) -> set:
    """The files a work dir's or bundle's manifest.json names, as far as it can be read (a
    regular file only: a FIFO planted in its place is not waited on)."""
    try:
        fd = os.open(os.path.join(folder, "manifest.json"), os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return set()
            manifest = json.loads(handle.read(64 << 20).decode("utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(manifest, dict):
        return set()
    names = set(manifest["files"]) if isinstance(manifest.get("files"), dict) else set()
    for section in ("complete", "steps"):
        for record in (manifest.get(section) or {}).values() if isinstance(manifest.get(section), dict) else ():
            if isinstance(record, dict) and isinstance(record.get("outputs"), dict):
                names |= set(record["outputs"])
    return {name for name in names if isinstance(name, str)}


def _artifact(folder: str | os.PathLike, real: str, identity) -> str | None:
    """The artifact of `folder` an output would replace: one by its name there, or the same
    file reached by another name (a hard link, a link from elsewhere)."""
    root = real_path(folder)
    names = _manifest_names(root)

    def kept(name: str) -> bool:
        return name in names or any(fnmatch.fnmatchcase(os.path.basename(name), p) for p in ARTIFACTS)

    relative = os.path.relpath(real, root)
    if not relative.startswith(os.pardir) and kept(relative):
        return os.path.join(os.fspath(folder), relative)
    if identity is None:
        return None
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    for name in sorted(set(entries) | {n for n in names if os.sep in n}):
        if kept(name) and _identity(os.path.join(root, name)) == identity:
            return os.path.join(os.fspath(folder), name)
    return None


def refuse_clobbering(outputs: dict, reads=(), makes=(), guards=()) -> None:
    """Refuse, in one line, an output (option name -> path) that is a file the command reads
    (a folder in `reads`: anything inside it), a file it makes, an artifact of a folder in
    `guards`, or the same file as another output. Files are compared as files (device and
    inode), after every link, never by the text of their names. A character device
    (/dev/null) destroys nothing and may take several outputs."""
    named = []
    for option, path in outputs.items():
        if path is None or os.fspath(path) == "-":
            continue
        stream, _ = output_target(path)
        if stream and stat.S_ISCHR(os.stat(path).st_mode):
            continue
        named.append((option, path, real_path(path), _identity(path)))
    for option, path, real, identity in named:
        for given in reads:
            if given is None:
                continue
            if os.path.isdir(given):
                root = real_path(given)
                if real == root or real.startswith(root.rstrip("/") + "/"):
                    raise OutputRefused(f"{option} {path} lies inside {given}, which this command "
                                        "reads; write elsewhere")
            elif real == real_path(given) or (identity is not None and identity == _identity(given)):
                raise OutputRefused(f"{option} {path} is {given}, which this command reads and "
                                    "would overwrite; write elsewhere")
        for made in makes:
            if made is not None and (real == real_path(made)
                                     or (identity is not None and identity == _identity(made))):
                raise OutputRefused(f"{option} {path} is {made}, which this command writes; "
                                    "write elsewhere")
        for folder in guards:
            hit = _artifact(folder, real, identity) if folder is not None else None
            if hit:
                raise OutputRefused(f"{option} {path} would replace {hit}, a file resnet-edge "
                                    f"keeps in {folder}; write elsewhere")
    for i, (option, path, real, identity) in enumerate(named):
        for other, _, other_real, other_identity in named[:i]:
            if real == other_real or (identity is not None and identity == other_identity):
                raise OutputRefused(f"{option} and {other} both name {path}; give each its own file")
