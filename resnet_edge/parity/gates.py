"""Parity gates per precision, with defaults that follow the anchors (MLPerf's 99% of FP32 for
INT8, MMDeploy's FP16 deltas), overridable from a TOML file and from flags.

Module-level imports are the standard library only: the deploy bundle copies this file (with
metrics.py) so verify.py on a Jetson applies exactly these gates.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

# the format of verify.json, the report a device's verify.py writes with these gates' verdicts
# (`report` merges them with parity and bench reports)
VERIFY_SCHEMA = "resnet-edge.verify/3"


@dataclass(frozen=True)
class Thresholds:
    """None disables a gate. The unit is in the name: _pct a percentage (99.5 means 99.5 %),
    _pt percentage points; cosine and max_abs have none."""

    min_top1_agreement_pct: float | None = None
    min_cosine: float | None = None  # mean cosine similarity of logits: a scale-free error bound
    max_abs: float | None = None
    max_accuracy_drop_pt: float | None = None
    min_relative_accuracy_pct: float | None = None


DEFAULTS = {
    "fp32": Thresholds(min_top1_agreement_pct=100.0, max_abs=1e-3),
    # tf32 (a GPU's fp32 with 10-bit-mantissa convolutions and matrix products) rounds like
    # fp16 does, in fp32's range: held to fp16's gates
    "tf32": Thresholds(min_top1_agreement_pct=99.5, max_accuracy_drop_pt=0.1),
    "fp16": Thresholds(min_top1_agreement_pct=99.5, max_accuracy_drop_pt=0.1),
    # agreement and cosine gate int8 on unlabelled data too; measured (README) on the digits
    # ResNet-20 and a ResNet-18: 100% agreement and cosine >= 0.9998 for every calibration
    # method, with room for 1000-class models where near-ties flip
    "int8": Thresholds(min_top1_agreement_pct=95.0, min_cosine=0.99, max_accuracy_drop_pt=1.0,
                       min_relative_accuracy_pct=99.0),
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


# the range each threshold must lie in
RANGES = {"min_top1_agreement_pct": (0.0, 100.0), "min_cosine": (-1.0, 1.0),
          "max_abs": (0.0, math.inf), "max_accuracy_drop_pt": (0.0, 100.0),
          "min_relative_accuracy_pct": (0.0, 100.0)}
SECTIONS = ("fp32", "tf32", "fp16", "int8", "int8-fp16")


def check_layer(layer: dict, table: dict[str, Thresholds], where: str,
                user: bool = False) -> dict[str, Thresholds]:
    """`table` updated by one layer of `{section: {gate: value}}`, every value checked: a known
    section and gate, a finite number in the gate's range (None disables a gate). From a
    `user`, a percentage gate of 1 or less reads as a fraction written by mistake (0.95 for
    95 %) and is refused, unless written "0.95%"."""
    table = dict(table)
    for section, values in layer.items():
        if section not in SECTIONS or not isinstance(values, dict):
            raise ValueError(f"{where}: unknown section [{section}]; use {', '.join(SECTIONS)}")
        checked = {}
        for name, value in values.items():
            if name not in RANGES:
                raise ValueError(f"{where}: unknown key {name!r} in [{section}]; use "
                                 f"{', '.join(sorted(RANGES))}")
            low, high = RANGES[name]
            meant = isinstance(value, str) and name.endswith("_pct") and value.endswith("%")
            if meant:
                try:
                    value = float(value[:-1])
                except ValueError:
                    raise ValueError(f"{where}: [{section}] {name} must be a number, got "
                                     f"{value!r}") from None
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{where}: [{section}] {name} must be a number, got {value!r}")
                if not math.isfinite(value) or not low <= value <= high:
                    raise ValueError(f"{where}: [{section}] {name} = {value} is outside "
                                     f"{low:g}..{high:g}")
                value = float(value)
                if user and name.endswith("_pct") and 0 < value <= 1 and not meant:
                    raise ValueError(f"{where}: [{section}] {name} = {value:g} looks like a "
                                     f"fraction, but _pct gates are percentages (95 means 95 %); "
                                     f"write {value * 100:g}, or \"{value:g}%\" if {value:g} % "
                                     "is meant")
            checked[name] = value
        base = table.get(section) or table[section.split("-")[0]]
        table[section] = replace(base, **checked)
    return table


def read_table(data) -> dict[str, Thresholds]:
    """A full table as a bundle's thresholds.json holds it, checked like any other input."""
    if not isinstance(data, dict) or not {"fp32", "fp16", "int8"} <= set(data):
        raise ValueError("thresholds.json needs [fp32], [fp16] and [int8] sections")
    return check_layer(data, DEFAULTS, "thresholds.json")


MAX_THRESHOLDS_BYTES = 1 << 20


def load_thresholds(toml_path: str | Path | None = None,
                    overrides: dict[str, dict[str, float]] | None = None) -> dict[str, Thresholds]:
    """Defaults, then `[fp16] max_accuracy_drop_pt = 0.2`-style tables from TOML, then flags;
    checked before any work starts."""
    from .. import strictjson
    from ..errors import BadInput
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    table = dict(DEFAULTS)
    try:
        if toml_path:
            try:
                # bounded, and never a FIFO's endless wait: /dev/zero and pipes are paths too
                raw = strictjson.read_regular(toml_path, MAX_THRESHOLDS_BYTES, "thresholds",
                                              "no gate table is")
                table = check_layer(tomllib.loads(raw.decode("utf-8")), table, str(toml_path),
                                    user=True)
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"cannot read thresholds {toml_path}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        return check_layer(overrides or {}, table, "--gate", user=True)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


# each threshold and the gate it sets, in the order evaluate_gates reports them
GATE_OF = {"min_top1_agreement_pct": "top1_agreement_pct", "min_cosine": "cosine",
           "max_abs": "max_abs", "max_accuracy_drop_pt": "accuracy_drop_pt",
           "min_relative_accuracy_pct": "relative_accuracy_pct"}


def gate_names(t: Thresholds) -> list[str]:
    """The gates `t` sets, known before anything runs: finite_logits always, then each set one."""
    return ["finite_logits", *(gate for field, gate in GATE_OF.items()
                               if getattr(t, field) is not None)]


def evaluate_gates(t: Thresholds, comparison: dict, accuracy: dict | None,
                   reference_accuracy: dict | None) -> list[GateResult]:
    """Every gate of `t` on one candidate; non-finite logits always fail, whatever `t` says."""
    bad = comparison.get("nonfinite", 0)
    results = [GateResult("finite_logits", bad, 0, bad == 0,
                          f"{bad} NaN or inf logits" if bad else "")]
    if t.min_top1_agreement_pct is not None:
        results.append(_agreement_gate(t.min_top1_agreement_pct, comparison))
    if t.min_cosine is not None:
        v = comparison["cosine"]
        results.append(GateResult("cosine", v, t.min_cosine, v >= t.min_cosine))
    if t.max_abs is not None:
        v = comparison["max_abs"]
        results.append(GateResult("max_abs", v, t.max_abs, v <= t.max_abs))
    measured = accuracy is not None and reference_accuracy is not None
    if t.max_accuracy_drop_pt is not None:
        drop = (reference_accuracy["top1"] - accuracy["top1"]) * 100 if measured else None
        results.append(GateResult("accuracy_drop_pt", drop, t.max_accuracy_drop_pt,
                                  drop <= t.max_accuracy_drop_pt + 1e-9 if measured else None,
                                  "" if measured else "no labels: accuracy not measured"))
    if t.min_relative_accuracy_pct is not None:
        rel = (accuracy["top1"] / reference_accuracy["top1"] * 100
               if measured and reference_accuracy["top1"] else None)
        results.append(GateResult("relative_accuracy_pct", rel, t.min_relative_accuracy_pct,
                                  rel >= t.min_relative_accuracy_pct - 1e-9 if rel is not None else None,
                                  "" if rel is not None else "no labels: accuracy not measured"))
    return results


MIN_DECISIVE = 30  # a perfect score on fewer images proves too little to pass on its own


def _agreement_gate(threshold: float, comparison: dict) -> GateResult:
    """Raw top-1 agreement, or, where the comparison set near-ties aside (its "decisive"
    entry), the Wilson 95 % lower bound of agreement on the decisive images. A bound below
    100 % can never reach a 100 % (or 99.5 % on 100 images) threshold, so a perfect score on
    at least MIN_DECISIVE decisive images passes too: no sample of that size can show more."""
    decisive = comparison.get("decisive")
    if decisive is None:
        v = comparison["top1_agreement"] * 100
        return GateResult("top1_agreement_pct", v, threshold, v >= threshold - 1e-9)
    n, k = decisive["images"], decisive["agree"]
    v = decisive["lower_bound"] * 100
    perfect = k == n >= MIN_DECISIVE
    note = (f"{k} of {n} decisive images agree, {decisive['near_ties']} near-ties set aside "
            f"(reference margin <= {decisive['near_tie_margin']:.3g}); value is the 95 % lower bound")
    if n < MIN_DECISIVE:
        note += f"; fewer than {MIN_DECISIVE} decisive images: add golden images"
    return GateResult("top1_agreement_pct", v, threshold, perfect or v >= threshold - 1e-9, note)


def failed_gates(rows: list[dict]) -> str:
    """'ort fp32 max_abs 7.6e-06 > 1e-09 (fail)': each failing gate, measured against its threshold."""
    return ", ".join(f"{row['backend']} {row['precision']} {describe(g)}"
                     for row in rows for g in row["gates"] if g["passed"] is False)


def deciding_digits(value: float, threshold: float, figures: int) -> tuple[str, str]:
    """(value, threshold) as text: the threshold as it was given (0.9999999, never rounded to
    1.000000), the value with at least `figures` significant digits and as many more as it
    takes to stand on its true side of the threshold."""
    shown = repr(float(threshold))
    shown = shown[:-2] if shown.endswith(".0") else shown
    for digits in range(figures, 18):
        text = f"{value:.{digits}g}"
        if value == threshold or (float(text) < threshold) == (value < threshold) and float(text) != threshold:
            return text, shown
    return repr(float(value)), shown


def describe(gate: dict) -> str:
    """One gate result as a person reads it: 'top1_agreement_pct 99.37 < 99.5 (fail)'."""
    if gate["passed"] is None:
        return f"{gate['gate']} not measured ({gate.get('note') or 'no labels'})"
    if gate["gate"] == "finite_logits":
        return f"finite_logits: {gate['value']} NaN or inf logits ({gate['status']})"
    low_is_bad = gate["gate"].startswith(("top1", "cosine", "relative"))
    held = gate["passed"]
    sign = (">=" if held else "<") if low_is_bad else ("<=" if held else ">")
    # cosine lives just under 1: four figures made 0.999959 read "1", its threshold's side unseen
    value, threshold = deciding_digits(gate["value"], gate["threshold"], 6 if gate["gate"] == "cosine" else 4)
    line = f"{gate['gate']} {value} {sign} {threshold} ({gate['status']})"
    return f"{line}: {gate['note']}" if gate.get("note") and not held else line
