"""What the command line prints, the same way in every command.

On a terminal: rich tables, a spinner and progress bars. Off a terminal (CI logs, pipes): the
same tables at full width, never cut short, and progress as timestamped lines with a rate and
an estimate of the time left, at most every PROGRESS_EVERY_S seconds. `--quiet` keeps results
and errors only; `--verbose` lets the libraries' own logs through.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape

from . import quiet as library_logs
from . import strictjson
from .artifacts import write_json_atomic
from .errors import DataNote, DataWarning

PROGRESS_EVERY_S = 10.0
LOG_WIDTH = 1000  # off a terminal: wide enough that no table is ever cut


class Settings:
    quiet = False
    verbose = False


visible = strictjson.visible  # what a terminal would act on, shown as its escape


class _Console(Console):
    """Every string it prints, our own and the text of files, tools and libraries inside it
    (report fields, file names, a board's power tool), shown with its control characters
    escaped; text that is not valid Rich markup (a file named `[/]`) printed as it is rather
    than ending a finished run in a traceback."""

    def render_str(self, text: str, **kwargs):
        text = visible(text)
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})


def _console(stderr: bool = False) -> Console:
    probe = _Console(stderr=stderr)
    return probe if probe.is_terminal else _Console(stderr=stderr, soft_wrap=True, width=LOG_WIDTH)


stdout = _console()
err = _console(stderr=True)


def json_owns_stdout() -> None:
    """`--json -`: standard output carries the JSON alone, so tables and notes move to stderr."""
    stdout.file = sys.stderr


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    Settings.quiet, Settings.verbose = quiet, verbose
    stdout.file = None  # back to standard output, whatever an earlier `--json -` did
    library_logs.Settings.verbose = verbose
    warnings.simplefilter("always", DataWarning)  # each data spec says its own
    if warnings.showwarning is not _show_warning:
        _show_warning.library = warnings.showwarning
        warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Our DataWarnings as `warning:` lines like any other; other warnings as Python shows them."""
    if issubclass(category, DataNote):
        note(str(message))
    elif issubclass(category, DataWarning):
        warn(str(message))
    else:
        _show_warning.library(message, category, filename, lineno, file, line)


def note(message: str) -> None:
    if not Settings.quiet:
        err.print(f"[yellow]note:[/] {escape(message)}")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def _log(message: str, started: float) -> None:
    err.print(f"[{time.perf_counter() - started:7.1f} s] {escape(message)}", highlight=False)


@contextlib.contextmanager
def steps() -> Iterator[Callable[[str], None]]:
    """A callback naming each step of a long command: a spinner on a terminal, a timestamped
    line per step in a log."""
    started = time.perf_counter()
    if Settings.quiet:
        yield lambda message: None
    elif err.is_terminal:
        with err.status("starting") as status:
            yield lambda message: status.update(escape(message))
    else:
        yield lambda message: _log(message, started)


class Progress:
    """done/total updates: a bar on a terminal, and off it a line at most every
    PROGRESS_EVERY_S seconds (and at the end) with the rate and the time left, and a line at
    least that often while one unit takes longer (a batch of 224 px photos on two cores took
    four minutes with nothing said)."""

    def __init__(self, label: str, unit: str, rate: bool = True):
        """`rate`: say the rate and the time left; not for units as unlike as a pipeline's
        steps, where one takes seconds and the next minutes."""
        self.label, self.unit, self.rate = label, unit, rate
        self.started = self.round_started = self.last = time.perf_counter()
        self.done, self.total = 0, None
        self._since = self.started  # when the unit now running began: the heartbeat counts from it
        self._bar = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._beat = None

    def __enter__(self) -> "Progress":
        if err.is_terminal and not Settings.quiet:
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            from rich.progress import Progress as Bar
            self._bar = Bar(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None)
        elif not Settings.quiet:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(1.0, PROGRESS_EVERY_S / 4)):
            with self._lock:
                now = time.perf_counter()
                # only when the work itself has been silent that long: fast updates speak for
                # themselves every PROGRESS_EVERY_S
                if now - self._since < PROGRESS_EVERY_S or now - self.last < PROGRESS_EVERY_S:
                    continue
                self.last = now
                total = self.total if self.total else "?"
                _log(f"{self.label}: {self.done}/{total} {self.unit}, still working on the next "
                     f"({now - self._since:.0f} s on it)", self.started)

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
            return
        with self._lock:
            self._update(done, total, detail)

    def _update(self, done: int, total: int | None, detail: str) -> None:
        now = time.perf_counter()
        if done < self.done:  # a new round (the next epoch): its rate starts afresh
            self.round_started = now
        next_step = not self.rate and done != self.done  # without a rate, each step is news
        self.done, self.total, self._since = done, total, now
        if Settings.quiet or (now - self.last < PROGRESS_EVERY_S and done != total and not next_step):
            return
        self.last = now
        elapsed = now - self.round_started
        per_second = done / elapsed if elapsed > 0 else 0.0
        left = (f", about {(total - done) / per_second:.0f} s left"
                if total and per_second and done < total else "")
        pace = f", {rate(per_second)} {self.unit}/s{left}" if self.rate else ""
        extra = f", {detail}" if detail else ""
        _log(f"{self.label}: {done}/{total if total else '?'} {self.unit}{pace}{extra}", self.started)


def rate(per_second: float) -> str:
    """A rate as a person reads it: 0.37, 4.2, 118 (a rate under 1 was printed as 0)."""
    return f"{per_second:.0f}" if per_second >= 10 else f"{per_second:.2g}"


def wrote(*paths: Path | str | None) -> None:
    """One line per file a command wrote, with its size: the last thing a command says."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_file():
            size = path.stat().st_size
            human = (f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"
                     if size >= 1e3 else f"{size} B")
            stdout.print(f"wrote {escape(visible(str(path), one_line=True))} ({human})", highlight=False)


def emit_json(data, path: Path | None) -> None:
    """--json FILE, the one convention: FILE gets strict JSON; `-` means standard output."""
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(strictjson.dumps(data, indent=2) + "\n")
        return
    write_json_atomic(path, data)
    wrote(path)
