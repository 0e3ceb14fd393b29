"""JSON that every parser reads: NaN and infinity, which json.dumps writes as bare NaN and
Infinity (not JSON), become null; numpy scalars and arrays become plain numbers and lists.

Standard library only: the deploy bundle carries this file in lib/ for verify.py's report.
"""

from __future__ import annotations

import json
import math


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


def read_report(path, schema: str | tuple[str, ...], what: str, max_bytes: int = 256 << 20) -> dict:
    """A report this tool wrote (`--json`) in one of the `schema` formats, read back with its
    size bounded and its format checked; ValueError says, in one line, why the file is not one."""
    from pathlib import Path
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise ValueError(f"{what} {path} is over {max_bytes >> 20} MiB, which no report is")
    try:
        report = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{what} {path} is not JSON ({str(exc).splitlines()[0]})") from None
    schemas = (schema,) if isinstance(schema, str) else schema
    if not isinstance(report, dict) or report.get("schema") not in schemas:
        found = report.get("schema") if isinstance(report, dict) else type(report).__name__
        raise ValueError(f"{what} {path} is not a {' or '.join(schemas)} report (it is {found!r})")
    return report

