"""JSON that every parser reads: NaN and infinity, which json.dumps writes as bare NaN and
Infinity (not JSON), become null; numpy scalars and arrays become plain numbers and lists.

Standard library only: the deploy bundle carries this file in lib/ for verify.py's report.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat

# what a terminal would act on rather than show: escape sequences (ESC retitles or clears the
# terminal), carriage return and backspace (overwrite what was printed), C1 controls, the line
# separators that split one line into two for str.splitlines(), the bidirectional controls that
# reorder what follows them (U+202E shows "exe.txt" for "txt.exe"), and lone surrogates, which
# no UTF-8 stream can carry (a write of one is an error); a newline too where one line is meant
UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_IN_TEXT = re.compile(f"[{UNSAFE}]")
_UNSAFE_IN_LINE = re.compile(f"[\n{UNSAFE}]")


def _escaped(match) -> str:
    return match[0].encode("unicode_escape", "backslashreplace").decode("ascii")


def visible(text: str, one_line: bool = False) -> str:
    """`text` with every character above shown as its escape (\\x1b, \\u202e), never acted on;
    with `one_line`, newlines too (a file name printed after `wrote`)."""
    return (_UNSAFE_IN_LINE if one_line else _UNSAFE_IN_TEXT).sub(_escaped, text)


def cut(text: str, limit: int = 160) -> str:
    """A field as a heading or a cell shows it: at most `limit` characters and the length of
    the rest (a 10 MB GPU name folded into a 36-column table was 280,000 lines and minutes)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _visible_strings(value):
    """A report's text as `visible` shows it, keys and values: what a file brings (a lone
    surrogate, a right-to-left override) is shown in the terminal, HTML and Markdown as its
    escape, and every writer can encode it."""
    if isinstance(value, str):
        return visible(value) if _UNSAFE_IN_TEXT.search(value) else value
    if isinstance(value, dict):
        return {_visible_strings(k): _visible_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_visible_strings(v) for v in value]
    return value


def plain(value):
    """`value` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return plain(value.tolist())
    return value


def dumps(value, **kwargs) -> str:
    return json.dumps(plain(value), allow_nan=False, **kwargs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a report holds")


# a report's numbers: what the keys below hold, wherever they stand, is a number (int or float,
# never true/false or text) or null, or a list of numbers and nulls (per_class: null for a class
# without images); a fraction lies in 0..1
NUMBERS = frozenset({
    "batch_size", "best_epoch", "classes", "classes_present", "cores", "cosine", "counts", "drop_pt",
    "edges", "estimated_seconds", "exact", "images", "images_per_s", "images_per_s_mean", "input_size",
    "iterations", "max_abs", "max_accuracy_drop_pt", "mean", "mean_abs", "mean_ms", "measured_seconds",
    "min_cosine", "min_ms", "min_relative_accuracy_pct", "min_top1_agreement_pct", "nonfinite",
    "num_classes", "p50_ms", "p90_ms", "p99_abs", "p99_ms", "per_class", "resize", "samples_ms", "std",
    "std_ms", "test_top1", "test_top5", "threshold", "top1", "top5", "top1_agreement", "top5_agreement",
    "val_top1", "val_top5", "value", "warmup", "ratio", "low", "high", "limit", "top1_change_pt",
    "agreement_change_pt", "samples", "seconds", "max_regression_pct", "top1_same",
    "max_abs_logit_change", "logits_compared", "skipped_count"})
NUMBER_MAPS = frozenset({"rails_mw", "mj_per_image"})  # rail name -> number
FRACTIONS = frozenset({"top1", "top5", "top1_agreement", "top5_agreement", "test_top1", "test_top5",
                       "val_top1", "val_top5", "top1_same"})
# a batch size is a whole number a model can take: 8.5 or 10**18 matched no row, so that batch
# went ungated ("no baseline") where it should have been refused
WHOLE = {"batch_size": (1, 1 << 20)}
MAX_DEPTH = 32  # a report nests about 6 deep
MAX_DIGITS = 18  # no count or size a report holds is longer; a float's range is past it


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is not a number a report holds")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as infinity
        raise ValueError(f"{text[:20]} is beyond any number a report holds")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_numbers(value) -> None:
    """ValueError naming the first field that is not what a report holds there: nesting past
    MAX_DEPTH, or a non-number (a string, true/false) where NUMBERS and NUMBER_MAPS hold numbers."""
    stack = [(value, 1, "")]
    while stack:
        node, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels, which no report is")
        if key in NUMBERS and node is not None:
            numbers = [v for v in node if v is not None] if isinstance(node, list) else [node]
            if not all(map(_is_number, numbers)):
                bad = next(v for v in numbers if not _is_number(v))
                raise ValueError(f"{key} holds {json.dumps(bad)[:40]}, not a number")
            if key in FRACTIONS and not isinstance(node, list) and not 0 <= node <= 1:
                raise ValueError(f"{key} {node} is not a fraction (0..1)")
            if key in WHOLE and not isinstance(node, list):
                low, high = WHOLE[key]
                if not (isinstance(node, int) and low <= node <= high):
                    raise ValueError(f"{key} {node} is not a whole number from {low} to {high}")
            continue
        if key in NUMBER_MAPS and isinstance(node, dict):
            for rail, number in node.items():
                if not _is_number(number):
                    raise ValueError(f"{key} {rail} holds {json.dumps(number)[:40]}, not a number")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, k) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, key if key not in NUMBERS else "") for v in node)


def read_regular(path, max_bytes: int, what: str, bound_note: str) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, else ValueError in one line: a FIFO
    (opened without waiting for a writer, then refused), a device or /dev/zero, a folder, or a
    file over the bound ("{what} {path} is over N MiB, which {bound_note}")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO's open would wait for a writer
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{what} {path} is not a regular file; give a file")
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise ValueError(f"{what} {path} is over {max_bytes >> 20} MiB, which {bound_note}")
    return raw


def read_report(path, schema: str | tuple[str, ...], what: str, max_bytes: int = 256 << 20) -> dict:
    """A report this tool wrote (`--json`) in one of the `schema` formats, read back strictly:
    a regular file (a FIFO would be waited on forever), its size bounded, numbers finite and
    within what a report holds, bounded nesting, and its format checked. Every reader of a
    report (a baseline, a run to merge) reads it here; ValueError says in one line why the file
    is not one."""
    raw = read_regular(path, max_bytes, what, "no report is")
    try:
        report = json.loads(raw.decode("utf-8"), parse_constant=_no_constant,
                            parse_int=_bounded_int, parse_float=_finite_float)
        check_numbers(report)
        report = _visible_strings(report)
    except RecursionError:
        raise ValueError(f"{what} {path} is nested deeper than {MAX_DEPTH} levels, which no "
                         "report is") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path} is not JSON ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # JSON, but with what no report holds
        raise ValueError(f"{what} {path} is not a well-formed report ({exc})") from None
    schemas = (schema,) if isinstance(schema, str) else schema
    if not isinstance(report, dict) or report.get("schema") not in schemas:
        found = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise ValueError(f"{what} {path} is not a {' or '.join(schemas)} report (it is {found!r})")
    return report
