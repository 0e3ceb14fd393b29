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
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

# a link into these leads to a stream (/dev/stdout -> /proc/self/fd/1), even when the shell
# redirected that stream to a regular file, which a rename would cut off from the shell;
# /dev/shm is a file system of ordinary files (a CI job's scratch), not of devices
STREAM_ROOTS = ("/dev/", "/proc/")
FILE_ROOTS = ("/dev/shm/",)
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputRefused(ValueError):
    """An output path that names something no file may replace; the message is one line."""


def output_target(path: str | os.PathLike) -> tuple[bool, Path]:
    """(True, the device or pipe to write through) or (False, the regular file to create or
    replace, reached through any links)."""
    path = Path(path)
    hops, link = [os.path.abspath(path)], path
    while link.is_symlink() and len(hops) < 40:
        link = Path(os.path.join(os.path.dirname(os.path.abspath(link)), os.readlink(link)))
        hops.append(os.path.abspath(link))
    via_stream_root = any(hop.startswith(STREAM_ROOTS) and not hop.startswith(FILE_ROOTS) for hop in hops)
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


def write_through(data: Path, stream: str | os.PathLike) -> None:
    """Copy the file `data` into a device or pipe opened as it is: appended, never created or
    truncated; a pipe that nothing reads is refused now rather than waited on."""
    try:
        fd = os.open(stream, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
    except OSError as exc:
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
