"""Parity gates per precision, with defaults that follow the anchors (MLPerf's 99% of FP32 for
INT8, MMDeploy's FP16 deltas), overridable from a TOML file and from flags.

Module-level imports are the standard library only: the deploy bundle copies this file (with
metrics.py) so verify.py on a Jetson applies exactly these gates.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class Thresholds:
    """None disables a gate. Agreement and accuracy are fractions; drops are in points."""

    min_top1_agreement: float | None = None
    max_abs: float | None = None
    max_accuracy_drop_pt: float | None = None
    min_relative_accuracy: float | None = None


DEFAULTS = {
    "fp32": Thresholds(min_top1_agreement=1.0, max_abs=1e-3),
    "fp16": Thresholds(min_top1_agreement=0.995, max_accuracy_drop_pt=0.1),
    "int8": Thresholds(max_accuracy_drop_pt=1.0, min_relative_accuracy=0.99),
}


def for_precision(table: dict[str, Thresholds], precision: str) -> Thresholds:
    """The gates of `precision`; a variant such as int8-fp16 (int8 with fp16 float parts) is
    held to its base precision's gates unless the table names it."""
    return table.get(precision) or table[precision.split("-")[0]]


@dataclass(frozen=True)
class GateResult:
    gate: str
    value: float | None
    threshold: float
    passed: bool | None  # None: not measured (no labels)
    note: str = ""

    @property
    def status(self) -> str:
        return {True: "pass", False: "fail", None: "not measured"}[self.passed]


def load_thresholds(toml_path: str | Path | None = None,
                    overrides: dict[str, dict[str, float]] | None = None) -> dict[str, Thresholds]:
    """Defaults, then `[fp16] max_accuracy_drop_pt = 0.2`-style tables from TOML, then flags."""
    from ..errors import BadInput
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    table = dict(DEFAULTS)
    layers = []
    if toml_path:
        try:
            layers.append(tomllib.loads(Path(toml_path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadInput(f"cannot read thresholds {toml_path}: {exc}") from None
    layers.append(overrides or {})
    names = {f.name for f in fields(Thresholds)}
    for layer in layers:
        for precision, values in layer.items():
            if precision not in table or not isinstance(values, dict):
                raise BadInput(f"thresholds: unknown section [{precision}]; use fp32, fp16, int8")
            unknown = set(values) - names
            if unknown:
                raise BadInput(f"thresholds: unknown key {sorted(unknown)[0]!r} in [{precision}]; "
                               f"use {', '.join(sorted(names))}")
            table[precision] = replace(table[precision], **values)
    return table


def evaluate_gates(t: Thresholds, comparison: dict, accuracy: dict | None,
                   reference_accuracy: dict | None) -> list[GateResult]:
    results = []
    if t.min_top1_agreement is not None:
        v = comparison["top1_agreement"]
        results.append(GateResult("top1_agreement", v, t.min_top1_agreement, v >= t.min_top1_agreement))
    if t.max_abs is not None:
        v = comparison["max_abs"]
        results.append(GateResult("max_abs", v, t.max_abs, v <= t.max_abs))
    measured = accuracy is not None and reference_accuracy is not None
    if t.max_accuracy_drop_pt is not None:
        drop = (reference_accuracy["top1"] - accuracy["top1"]) * 100 if measured else None
        results.append(GateResult("accuracy_drop_pt", drop, t.max_accuracy_drop_pt,
                                  drop <= t.max_accuracy_drop_pt + 1e-9 if measured else None,
                                  "" if measured else "no labels: accuracy not measured"))
    if t.min_relative_accuracy is not None:
        rel = (accuracy["top1"] / reference_accuracy["top1"] if measured and reference_accuracy["top1"]
               else None)
        results.append(GateResult("relative_accuracy", rel, t.min_relative_accuracy,
                                  rel >= t.min_relative_accuracy - 1e-12 if rel is not None else None,
                                  "" if rel is not None else "no labels: accuracy not measured"))
    return results
