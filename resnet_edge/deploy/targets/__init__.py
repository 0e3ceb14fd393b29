"""Deployment targets, one module per family behind `Target` (base.py), named here. A new target
is an entry in its family's module (or a new module with its own Target subclass) and a line
below; nothing else changes."""

from __future__ import annotations

from .base import Packing, Target, refuse_foreign_options
from .deepstream import DEEPSTREAM
from .engine import JETPACK5, JETPACK6, X86_TRT10, X86_TRT11
from .triton import TRITON

TARGETS: dict[str, Target] = {t.name: t for t in (JETPACK5, JETPACK6, X86_TRT10, X86_TRT11,
                                                  TRITON, DEEPSTREAM)}

__all__ = ["TARGETS", "Target", "Packing", "refuse_foreign_options"]
