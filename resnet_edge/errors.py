"""Errors that map to the exit codes in DESIGN.md.

The library raises these with a one-line message that names the problem and the fix; the CLI
prints the line and exits with the code, without a traceback unless --debug is given.
`translate` is the one place where errors raised by dependencies (the OS, ONNX, ONNX Runtime,
Pillow, JSON) become those exit codes; anything it does not know stays a traceback, because it
is a bug.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import shutil


class ResnetEdgeError(Exception):
    exit_code = 2


class BadInput(ResnetEdgeError):
    """Bad usage or bad input: exit 2."""

    exit_code = 2


class GateFailed(ResnetEdgeError):
    """A parity or accuracy gate failed: exit 1."""

    exit_code = 1


class MissingBackend(ResnetEdgeError):
    """A backend or dependency needed for what was asked is not available: exit 3."""

    exit_code = 3


class DataWarning(UserWarning):
    """Data that was read with something left out (non-image files skipped), or a model used
    otherwise than it was made for (another input size): the CLI prints it as a warning line,
    and a notebook shows it as any Python warning."""


class DataNote(DataWarning):
    """A choice made for the user that they should know of (the data a model defaulted to):
    the CLI prints it as a note line."""


def install_hint(extras: str) -> str:
    """How to add one of this project's extras from where its user is: resnet-edge installs from
    its clone. It is not on the package index, so `pip install 'resnet-edge[...]'` fails, and
    would install a stranger's package if anyone ever took the name."""
    return f"in the resnet-edge clone: pip install -e '.[{extras}]', or make venv, which picks the set"


def whole(value) -> bool:
    """An int that is not a bool (True is 1 to Python, not to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def number_in(value, low: float, high: float, what: str) -> float:
    """A number given to the library (the API, the pytest plugin), checked as the command line
    checks its options: a real number (not a bool, not text), finite (NaN passes every
    comparison, so a NaN gate never fails) and within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise BadInput(f"{what} {value} is outside {low:g}..{high:g}")
    return float(value)


@contextlib.contextmanager
def well_formed(path, what: str):
    """Reading the fields of a report this tool wrote, given back as input (a baseline, a run to
    merge): a missing field or a value of the wrong type or range is the file's fault, said in
    one line naming it, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:
        raise BadInput(f"{what} {path} is not a well-formed report ({type(exc).__name__}: "
                       f"{first_line(exc)}); give one resnet-edge wrote") from None


def first_line(exc: BaseException) -> str:
    """A library exception's first line, short enough for our one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """Our own error's message, as one line. A data-loader worker's error reaches the main
    process wrapped in its traceback ("Caught BadInput in DataLoader worker process 0 ..."): the
    original message is its last line."""
    text = str(exc).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(exc).__name__


LOW_DISK = 16 << 20


def disk_problem(path, exc: BaseException | None = None) -> str | None:
    """'disk full' / 'read-only' / 'permission denied' in words, when that is what `exc` (or the
    free space where `path` lives) says; None otherwise."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return f"no space left on the device holding {path} (disk full); free some space"
    if code == errno.EROFS:
        return f"{path} is on a read-only file system; choose another --out"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied writing {path}; choose another --out"
    if code == errno.EDQUOT:
        return f"disk quota exceeded writing {path}; free some space"
    try:  # libraries that hit a full disk rarely say so (torch.onnx: "unexpected pos")
        if path is not None and shutil.disk_usage(_existing_parent(path)).free < LOW_DISK:
            return f"no space left on the device holding {path} (disk full); free some space"
    except OSError:
        pass
    return None


def _existing_parent(path):
    from pathlib import Path
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def translate(exc: BaseException) -> ResnetEdgeError | None:
    """The exit-code error for a dependency's exception, or None if it is not one we know."""
    if isinstance(exc, ResnetEdgeError):
        return exc
    module = type(exc).__module__ or ""
    if isinstance(exc, OSError) and not module.startswith(("PIL", "onnxruntime")):
        where = exc.filename or "a file"
        problem = disk_problem(exc.filename, exc)
        if problem:
            return BadInput(problem)
        if exc.errno == errno.ENOENT:
            return BadInput(f"{where} not found")
        return BadInput(f"cannot use {where}: {exc.strerror or first_line(exc)}")
    if module.startswith("onnxruntime"):
        return BadInput(f"ONNX Runtime refused the model or its input: {first_line(exc)}")
    if module.startswith("google.protobuf") or type(exc).__name__ == "DecodeError":
        return BadInput(f"not a readable ONNX file ({first_line(exc)}); export it again")
    if module.startswith("PIL"):
        return BadInput(f"an image cannot be decoded: {first_line(exc)}")
    if isinstance(exc, json.JSONDecodeError):
        return BadInput(f"a JSON file is damaged ({first_line(exc)})")
    return None
