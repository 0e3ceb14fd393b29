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
