"""What the command line's output must look like, shared by the tests that check it."""

import re

PROGRESS = re.compile(r"^\[\s*\d+\.\d s\] ")  # off a terminal, long work logs "[  12.3 s] ..."


def problem_lines(stderr: str) -> list[str]:
    """stderr without the progress log and notes (a default the command took, said): what a
    failing command says about the failure."""
    return [line for line in stderr.strip().splitlines()
            if not PROGRESS.match(line) and not line.startswith("note: ")]


def one_line_error(result, code: int, message: str) -> str:
    """The command exited `code` with exactly one line saying what is wrong, and no traceback."""
    assert result.exit_code == code, result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    return lines[0]
