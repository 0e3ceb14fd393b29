"""$SOURCE_DATE_EPOCH, the reproducible-builds convention for "the time this was made": read and
checked once, at the start of every command, because libraries read it on their own (numpy.f2py
with int() on import, tar and gzip when a bundle is packed) and end in a traceback on a value
they cannot take."""

from __future__ import annotations

import os
import re

from .errors import BadInput

# gzip's header holds the time in 32 bits (RFC 1952, MTIME): 2106-02-07 is the last it can say
MAX_EPOCH = 2**32 - 1


def source_date_epoch() -> int | None:
    """Whole seconds since 1970, from 0 to MAX_EPOCH; None where the variable is unset."""
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None:
        return None
    seconds = int(text) if re.fullmatch(r"[0-9]{1,20}", text.strip()) else None
    if seconds is None or seconds > MAX_EPOCH:
        raise BadInput(f"SOURCE_DATE_EPOCH={text[:40]!r} is not whole seconds since 1970 from 0 "
                       f"to {MAX_EPOCH} (2106, gzip's limit); set it to one, or unset it")
    return seconds
