"""Is this parity run worse than an earlier one of the same model, on the same data? The
question a pull request asks of main's report: per backend and precision, top-1 accuracy (with
labels) and agreement with the reference, each as a change in points."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import strictjson
from ..errors import BadInput, number_in, well_formed
from .run import SCHEMA, saved_logits

MAX_ACCURACY_DROP_PT = 0.5
# the reference's logits on one machine and one build are exact; across threads, CPUs and torch
# releases fp32 sums reorder, which moves logits by about 1e-5 of their size, not more
REFERENCE_TOLERANCE = 1e-3


def read_baseline(path: str | Path) -> dict:
    """A parity report to compare with, read strictly."""
    try:
        return strictjson.read_report(path, SCHEMA, "baseline")
    except ValueError as exc:
        raise BadInput(f"{exc}; give a `parity --json` report") from None


def compare(report: dict, baseline: dict, where: str,
            max_drop_pt: float = MAX_ACCURACY_DROP_PT) -> dict:
    """Each row both runs measured; refused when the two runs are of other models or other
    evaluation sets, whose accuracies say nothing of each other."""
    max_drop_pt = number_in(max_drop_pt, 0, 100, "the most accuracy may drop (points)")
    with well_formed(where, "baseline"):
        return _compare(report, baseline, where, max_drop_pt)


def refuse_incomparable(baseline: dict, model: dict, data: dict, where: str) -> None:
    """A baseline of another model, or of other evaluation images, refused naming what differs.
    The images are told apart by content (data's sha256: the same set at another path, another
    CI workspace, is the same set); a baseline made before reports kept it, by spec and count."""
    with well_formed(where, "baseline"):
        old_model, old_data = baseline.get("model", {}), baseline.get("data", {})
        for key in ("arch", "num_classes"):
            if model.get(key) != old_model.get(key):
                raise BadInput(f"baseline {where} is of another model ({key} {old_model.get(key)!r}, "
                               f"not {model.get(key)!r})")
        counted = old_data.get("images") == data["images"]
        same = (counted and old_data["sha256"] == data["sha256"]
                if old_data.get("sha256") and data.get("sha256")
                else counted and old_data.get("spec") == data["spec"])
        if not same:
            raise BadInput(f"baseline {where} evaluated other images ({old_data.get('spec')!r}, "
                           f"{old_data.get('images')} images) than this run ({data['spec']!r}, "
                           f"{data['images']}): different sets are not a regression check; evaluate "
                           "both on one set")


def _compare(report: dict, baseline: dict, where: str, max_drop_pt: float) -> dict:
    refuse_incomparable(baseline, report["model"], report["data"], where)
    old_rows = {(r["backend"], r["precision"]): r for r in baseline.get("candidates", [])
                if r.get("status") == "ran"}
    rows = []
    for row in report["candidates"]:
        key = (row["backend"], row["precision"])
        if row["status"] != "ran":
            continue
        old = old_rows.get(key)
        entry = {"backend": key[0], "precision": key[1]}
        if old is None:
            rows.append({**entry, "verdict": "no baseline"})
            continue
        agreement = (row["metrics"]["top1_agreement"] - old["metrics"]["top1_agreement"]) * 100
        top1 = ((row["accuracy"]["top1"] - old["accuracy"]["top1"]) * 100
                if row["accuracy"] and old.get("accuracy") else None)
        worse = top1 if top1 is not None else agreement
        rows.append({**entry, "top1_change_pt": top1, "agreement_change_pt": agreement,
                     "verdict": "regression" if worse < -max_drop_pt else "pass"})
    return {"baseline": where, "max_accuracy_drop_pt": max_drop_pt, "rows": rows,
            "reference": _reference(report["reference"], baseline.get("reference", {})),
            "regressions": [r for r in rows if r["verdict"] == "regression"]}


def change(row: dict) -> str:
    """What a compared row's verdict judged: "top-1 -2.00 pt", or agreement where the set has
    no labels."""
    if row["top1_change_pt"] is not None:
        return f"top-1 {row['top1_change_pt']:+.2f} pt"
    return f"agreement {row['agreement_change_pt']:+.2f} pt"


def _reference(now: dict, old: dict) -> dict:
    """The reference's own outputs against the baseline's saved ones, on the same images: a
    changed reference (weights, preprocessing, a torch upgrade) moves every row with it, which
    a reader must know before blaming a backend."""
    if not old.get("outputs"):
        return {"compared": False, "note": "the baseline saved no reference outputs (made before "
                                           "parity kept them): only the rows are compared"}
    top1, old_top1 = now["outputs"]["top1"], old["outputs"]["top1"]
    if len(top1) != len(old_top1):
        raise ValueError(f"reference outputs for {len(old_top1)} images, not {len(top1)}")
    logits, old_logits = saved_logits(now["outputs"]), saved_logits(old["outputs"])
    k = min(len(logits), len(old_logits))
    if logits.shape[1] != old_logits.shape[1]:
        raise ValueError(f"reference logits of {old_logits.shape[1]} classes, not {logits.shape[1]}")
    same = float(np.mean(np.asarray(top1) == np.asarray(old_top1))) if top1 else 1.0
    diff = float(np.abs(logits[:k] - old_logits[:k]).max()) if k else 0.0
    return {"compared": True, "images": len(top1), "top1_same": same, "logits_compared": k,
            "max_abs_logit_change": diff, "changed": same < 1.0 or diff > REFERENCE_TOLERANCE}
