"""Parity reports: a rich table for the terminal, JSON for machines, Markdown (+ PNG plot) for
humans, JUnit XML (one test case per backend x precision x gate) for CI systems. Every format
lists the skipped backends with their reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.etree import ElementTree as ET

from rich.table import Table

from ..artifacts import atomic_path, write_json_atomic, write_text_atomic


def _pct(v):
    return "-" if v is None else f"{v:.2%}"


def _gates_text(row) -> str:
    if row["status"] == "skipped":
        return "skipped"
    bad = [g["gate"] for g in row["gates"] if g["passed"] is False]
    unmeasured = [g["gate"] for g in row["gates"] if g["passed"] is None]
    if bad:
        return "FAIL: " + ", ".join(bad)
    return "pass" + (f" ({', '.join(unmeasured)} not measured)" if unmeasured else "")


def table(report: dict) -> Table:
    ref = report["reference"]
    data = report["data"]
    acc = ref["accuracy"]
    title = (f"{report['model']['arch']} parity on {data['spec']} ({data['images']} images); "
             f"reference {ref['device']}" + (f" top-1 {acc['top1']:.2%}" if acc else ""))
    skipped = sum(row["status"] == "skipped" for row in report["candidates"])
    caption = "; ".join(filter(None, [data["accuracy_note"],
                                      f"{skipped} skipped (below)" if skipped else ""]))
    t = Table(title=title, caption=caption or None)
    # p99 abs and cosine are in the JSON and Markdown reports; the terminal keeps to what gates
    for col in ("backend", "max abs", "top-1 agree", "top-1", "drop pt", "ms/batch", "gates"):
        t.add_column(col, justify="left" if col in ("backend", "gates") else "right")
    for row in report["candidates"]:
        if row["status"] == "skipped":  # listed under the table, where the reason has room
            continue
        m, a, lat = row["metrics"], row["accuracy"], row["latency"]
        gates = _gates_text(row)
        style = "red" if gates.startswith("FAIL") else "green"
        t.add_row(row["device"], f"{m['max_abs']:.2e}", _pct(m["top1_agreement"]), _pct(a and a["top1"]),
                  "-" if not a else f"{a['drop_pt']:+.2f}", f"{lat['p50_ms']:.2f}" if lat else "-",
                  f"[{style}]{gates}[/]")
    return t


def write_json(report: dict, path: str | os.PathLike) -> None:
    write_json_atomic(path, report)


def write_junit(report: dict, path: str | os.PathLike) -> None:
    cases = []
    for row in report["candidates"]:
        classname = f"resnet_edge.parity.{row['backend']}.{row['precision']}"
        if row["status"] == "skipped":
            case = ET.Element("testcase", classname=classname, name="available", time="0")
            ET.SubElement(case, "skipped", message=row["reason"])
            cases.append(case)
            continue
        for g in row["gates"]:
            case = ET.Element("testcase", classname=classname, name=g["gate"], time="0")
            detail = f"{g['gate']} = {g['value']!r}, threshold {g['threshold']!r}"
            if g["passed"] is False:
                ET.SubElement(case, "failure", message=detail, type="ParityGateFailed").text = detail
            elif g["passed"] is None:
                ET.SubElement(case, "skipped", message=g["note"])
            cases.append(case)
    suite = ET.Element("testsuite", name="resnet-edge parity", tests=str(len(cases)),
                       failures=str(sum(c.find("failure") is not None for c in cases)),
                       skipped=str(sum(c.find("skipped") is not None for c in cases)),
                       errors="0", timestamp=report["created"])
    suite.extend(cases)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    write_text_atomic(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def write_markdown(report: dict, path: str | os.PathLike) -> Path | None:
    """Markdown report; the latency-vs-accuracy plot goes beside it as <name>.png."""
    path = Path(path)
    plot = plot_latency_accuracy(report, path.with_suffix(".png"))
    ref, data, machine = report["reference"], report["data"], report["machine"]
    lines = [f"# Parity: {report['model']['arch']}", "",
             f"- data: `{data['spec']}`, {data['images']} images, batch {data['batch_size']}"
             + ("" if data["labelled"] else f" ({data['accuracy_note']})"),
             f"- reference: {ref['device']}"
             + (f", top-1 {ref['accuracy']['top1']:.2%}, top-5 {ref['accuracy']['top5']:.2%}"
                if ref["accuracy"] else ""),
             f"- machine: {machine['cpu']} ({machine['cores']} cores)"
             + (f", {machine['gpu']} (driver {machine['driver']})" if machine.get("gpu") else ", no GPU"),
             f"- result: **{'PASS' if report['summary']['passed'] else 'FAIL'}**", "",
             "| backend | max abs | p99 abs | cosine | top-1 agreement | top-1 | drop (pt) | ms/batch p50 | gates |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in report["candidates"]:
        if row["status"] == "skipped":
            lines.append(f"| {row['backend']} {row['precision']} | | | | | | | | skipped: {row['reason']} |")
            continue
        m, a, lat = row["metrics"], row["accuracy"], row["latency"]
        lines.append(f"| {row['device']} | {m['max_abs']:.2e} | {m['p99_abs']:.2e} | {m['cosine']:.6f} "
                     f"| {_pct(m['top1_agreement'])} | {_pct(a and a['top1'])} "
                     f"| {'-' if not a else format(a['drop_pt'], '+.2f')} "
                     f"| {lat['p50_ms']:.2f} | {_gates_text(row)} |")
    if plot:
        lines += ["", f"![latency vs accuracy]({plot.name})"]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return plot


def plot_latency_accuracy(report: dict, path: Path) -> Path | None:
    """Latency (per batch, from the evaluation pass) against top-1, or agreement without labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = report["reference"]
    points = [(ref["device"], ref["latency"], ref["accuracy"]["top1"] if ref["accuracy"] else 1.0)]
    for row in report["candidates"]:
        if row["status"] == "ran":
            y = row["accuracy"]["top1"] if row["accuracy"] else row["metrics"]["top1_agreement"]
            points.append((row["device"], row["latency"], y))
    points = [(label, lat["p50_ms"], y) for label, lat, y in points if lat]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, x, y in points:
        ax.scatter([x], [y * 100])
        ax.annotate(label, (x, y * 100), textcoords="offset points", xytext=(5, 5), fontsize=8)
    measured = report["reference"]["latency"]["batch_size"] if report["reference"]["latency"] else "?"
    ax.set_xlabel(f"latency per batch of {measured}, p50 (ms)")
    ax.set_ylabel("top-1 (%)" if report["data"]["labelled"] else "top-1 agreement with reference (%)")
    ax.set_title(f"{report['model']['arch']} on {report['data']['spec']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def load(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
