"""Errors that map to the exit codes in DESIGN.md.

The library raises these with a one-line message that names the problem and the fix; the CLI
prints the line and exits with the code, without a traceback unless --debug is given.
"""


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


def first_line(exc: BaseException) -> str:
    """A library exception's first line, short enough for our one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
