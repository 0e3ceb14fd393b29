"""The pictures of a parity report, drawn from its JSON alone: the summary (parity.png and the
top of the HTML page), logit-error distributions and per-class accuracy change.

Each function returns PNG bytes, or None where the report holds nothing to draw. Pass and fail
are colour and word both, so a failing run never looks like a passing one in grey print.
"""

from __future__ import annotations

import io

import numpy as np

from ..pictures import literal
from ..pictures import pyplot as _pyplot

PASS, FAIL, REFERENCE, SKIPPED = "#1a7f37", "#cf222e", "#24292f", "#8c959f"
MARKERS = "osD^vP<>Xhp*"
# candidates that pass get these (no green or red, which mean pass and fail); failing ones red
PALETTE = ("#0969da", "#8250df", "#bf8700", "#1b7c83", "#953800", "#4d2d00", "#6e7781")
MOST_CLASSES = 30  # per-class chart: more classes than this show the ones that changed most


def percent(v) -> str:
    """A share (0..1) as the reports print it, "-" where it was not measured."""
    return "-" if v is None else f"{v:.2%}"


def verdict(row: dict) -> str:
    """'pass', 'FAIL' or 'skipped' for one candidate row."""
    if row["status"] == "skipped":
        return "skipped"
    return "FAIL" if any(g["passed"] is False for g in row["gates"]) else "pass"




def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def _label(row: dict) -> str:
    return f"{row['backend']} {row['precision']}"


def _colour(row: dict, i: int) -> str:
    return FAIL if verdict(row) == "FAIL" else PALETTE[i % len(PALETTE)]


def title(report: dict) -> str:
    data = report["data"]
    result = "PASS" if report["summary"]["passed"] else "FAIL"
    return f"{report['model']['arch']} on {data['spec']} ({data['images']} images): {result}"


def summary(report: dict) -> bytes:
    """Left: top-1 (or agreement, without labels) against latency per batch, one marker per
    backend, pass/fail in colour and legend. Right: the largest logit error of every
    candidate on a log scale with its gate, and the skipped ones with their reasons."""
    plt = _pyplot()
    rows = report["candidates"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1, 1.1]})
    fig.suptitle(literal(title(report)), color=PASS if report["summary"]["passed"] else FAIL,
                 fontweight="bold")
    _accuracy_latency(left, report)
    _logit_errors(right, rows)
    fig.tight_layout()
    return _png(fig)


def _accuracy_latency(ax, report: dict) -> None:
    labelled = report["data"]["labelled"]
    ref = report["reference"]
    points = [(f"{ref['backend']} {ref['precision']} (reference)", ref["latency"],
               ref["accuracy"]["top1"] * 100 if labelled else 100.0, REFERENCE)]
    for row in report["candidates"]:
        if row["status"] == "ran":
            y = (row["accuracy"]["top1"] if labelled else row["metrics"]["top1_agreement"]) * 100
            points.append((f"{_label(row)}: {verdict(row)}", row["latency"], y,
                           FAIL if verdict(row) == "FAIL" else PASS))
    points = [(label, lat["p50_ms"], y, colour) for label, lat, y, colour in points if lat]
    if not points:
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    for i, (label, x, y, colour) in enumerate(points):
        # markers stay whole at the 100 % edge; labels go to the legend, where they cannot overlap
        ax.scatter([x], [y], marker=MARKERS[i % len(MARKERS)], s=70, color=colour,
                   edgecolors="white", linewidths=0.8, label=label, clip_on=False, zorder=3)
    ys = [y for _, _, y, _ in points]
    ax.set_ylim(*accuracy_axis(ys))
    xs = [x for _, x, _, _ in points]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    batch = ref["latency"]["batch_size"] if ref["latency"] else "?"
    where = ("" if report["machine"].get("gpu") else
             "\non this machine's CPU: not what a GPU or Jetson runs (int8 and fp16 gain there)")
    ax.set_xlabel(f"latency per batch of {batch}, p50 (ms), from the evaluation pass{where}")
    ax.set_ylabel("top-1 accuracy (%)" if labelled else "top-1 agreement with the reference (%)")
    ax.set_title("accuracy against latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)


MIN_AXIS_PT = 5.0  # rows 0.16 points apart drawn on a 0.2-point axis looked worlds apart


def accuracy_axis(ys: list[float]) -> tuple[float, float]:
    """The accuracy axis (percent): the points with room around them, at least MIN_AXIS_PT tall,
    within 0..100."""
    low, high = min(ys), max(ys)
    span = max(high - low, MIN_AXIS_PT)
    middle = (low + high) / 2
    bottom, top = middle - span * 0.6, middle + span * 0.6
    if top > 100.0:
        bottom, top = bottom - (top - 100.0), 100.0
    if bottom < 0.0:
        bottom, top = 0.0, min(100.0, top - bottom)
    return bottom, top


def _logit_errors(ax, rows: list[dict]) -> None:
    names = [_label(r) for r in rows]
    y = np.arange(len(rows))[::-1]
    measured = [r["metrics"]["max_abs"] for r in rows if r["status"] == "ran"]
    finite = [v for v in measured if np.isfinite(v) and v > 0]
    floor = min(finite) / 10 if finite else 1e-6
    ceiling = max(finite + [floor * 100]) * 10
    for row, at in zip(rows, y):
        if row["status"] == "skipped":
            ax.text(floor, at, f"  skipped: {literal(_short(row['reason']))}", va="center", fontsize=8,
                    color=SKIPPED)
            continue
        value = row["metrics"]["max_abs"]
        colour = FAIL if verdict(row) == "FAIL" else PASS
        shown = ceiling if not np.isfinite(value) else max(value, floor)
        ax.barh(at, shown, left=floor, color=colour, height=0.6)
        text = "NaN/inf" if not np.isfinite(value) else f"{value:.1e}"
        ax.text(shown, at, f" {text}  {verdict(row)}", va="center", fontsize=8, color=colour)
        gate = next((g for g in row["gates"] if g["gate"] == "max_abs"), None)
        if gate:
            ax.plot([gate["threshold"]] * 2, [at - 0.4, at + 0.4], color=REFERENCE, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(floor, ceiling * 100)
    ax.set_yticks(y, names, fontsize=9)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("largest |logit error| against the reference (log scale; black tick: max_abs gate)")
    ax.set_title("logit error per candidate", fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def _short(reason: str) -> str:
    """A reason's first clause for the picture; the report beside it has the whole of it."""
    for stop in (":", " (", ";", ","):
        reason = reason.split(stop)[0]
    return reason if len(reason) <= 60 else reason[:57] + "..."


def error_distributions(report: dict) -> bytes | None:
    """Share of images by their largest logit error, one line per candidate, log-scale x."""
    rows = [r for r in report["candidates"] if r["status"] == "ran" and r.get("error_histogram")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, row in enumerate(rows):
        h = row["error_histogram"]
        edges, counts = np.asarray(h["edges"]), np.asarray(h["counts"], dtype=float)
        images = max(row["metrics"]["images"], 1)
        extra = [f"{h['exact']} exact"] * bool(h["exact"]) + [f"{h['nonfinite']} NaN/inf"] * bool(h["nonfinite"])
        label = f"{_label(row)}: {verdict(row)}" + (f" ({', '.join(extra)})" if extra else "")
        if counts.sum() == 0:
            ax.plot([], [], label=label + " - no nonzero errors")
            continue
        ax.stairs(counts / images * 100, edges, label=label, lw=1.8, color=_colour(row, i),
                  linestyle=["-", "--", "-.", ":"][i % 4])
    nonzero = [e for r in rows for e, c in zip(r["error_histogram"]["edges"], r["error_histogram"]["counts"]) if c]
    if nonzero:
        ax.set_xlim(min(nonzero) / 3, max(nonzero) * 30)
    ax.set_xscale("log")
    ax.set_xlabel("largest |logit error| of an image against the reference (log scale)")
    ax.set_ylabel("images (%)")
    ax.set_title("logit error distribution per candidate", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def class_changes(report: dict) -> tuple[bytes | None, str]:
    """Per-class top-1 of each candidate minus the reference's, in points, and a sentence on
    what is shown (all classes, or the ones that changed most)."""
    ref = report["reference"]["accuracy"]
    rows = [r for r in report["candidates"]
            if r["status"] == "ran" and r["accuracy"] and r["accuracy"].get("per_class")]
    if not ref or not ref.get("per_class") or not rows:
        return None, "no labels: per-class accuracy was not measured"
    base = np.array([np.nan if v is None else v for v in ref["per_class"]])
    changes = np.array([[np.nan if v is None else v for v in r["accuracy"]["per_class"]]
                        for r in rows]) * 100 - base * 100
    present = np.flatnonzero(~np.isnan(base))
    if not np.nanmax(np.abs(changes[:, present]), initial=0.0):
        return None, (f"no class changed: every candidate's top-1 equals the reference's in all "
                      f"{len(present)} classes with images")
    order = present
    note = f"all {len(present)} classes with images"
    if len(present) > MOST_CLASSES:
        worst = np.nanmax(np.abs(changes[:, present]), axis=0)
        order = present[np.argsort(-worst, kind="stable")[:MOST_CLASSES]]
        note = f"the {MOST_CLASSES} of {len(present)} classes that changed most"
    names = report["model"].get("class_names") or []
    ticks = [literal(names[c]) if c < len(names) else str(c) for c in order]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.32 * len(order) * len(rows) + 2), 4.2))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        ax.bar(np.arange(len(order)) + i * width - 0.4 + width / 2, changes[i, order], width,
               label=f"{_label(row)}: {verdict(row)}", color=_colour(row, i))
    ax.axhline(0, color=REFERENCE, lw=0.8)
    ax.set_xticks(np.arange(len(order)), ticks, rotation=60 if len(order) > 12 else 0,
                  ha="right" if len(order) > 12 else "center", fontsize=8)
    ax.set_xlabel("class")
    ax.set_ylabel("top-1 change against the reference (points)")
    ax.set_title(f"per-class accuracy change ({note})", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig), note


def provenance(report: dict) -> list[str]:
    """What the numbers rest on beyond the table: what int8 was calibrated on, and which files
    of the evaluation folder were left out as not images."""
    lines = []
    calibration = report.get("calibration")
    if calibration:
        left = f", {len(calibration['excluded'])} layers left in float" if calibration.get("excluded") else ""
        lines.append(f"int8 calibrated on {calibration.get('data')} ({calibration.get('samples')} images, "
                     f"{calibration.get('method')}, {calibration.get('recipe')} recipe{left})")
    data = report["data"]
    if data.get("skipped_count"):
        shown = ", ".join(data["skipped_files"][:3])
        lines.append(f"{data['skipped_count']} files of {data['spec']} skipped as not images (first: {shown})")
    return lines
