"""Silence libraries that print progress or advice we already show in our own words, unless
the user asked for `--verbose`."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator


class Settings:
    verbose = False


@contextlib.contextmanager
def quiet(*logger_names: str) -> Iterator[None]:
    """Raise the named loggers ("" is the root logger) to ERROR, drop warnings and stdout."""
    if Settings.verbose:
        yield
        return
    loggers = [logging.getLogger(name or None) for name in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
