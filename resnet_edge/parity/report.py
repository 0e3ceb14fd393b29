"""Parity reports: a rich table for the terminal, JSON for machines, Markdown (+ PNG summary)
and one self-contained HTML page for people, JUnit XML (one test case per backend x precision x
gate) for CI systems. Every format lists the skipped backends with their reasons.

Each writer takes (report, path) and returns the other files it wrote beside `path`.
Keys starting with "_" (the HTML page's thumbnails) stay in memory and never reach a file."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path
from xml.etree import ElementTree as ET

from rich.table import Table

from ..artifacts import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..outputs import is_stream
from . import plots
from .plots import percent
from .gates import describe


def _gates_text(row) -> str:
    """'pass', or 'FAIL: ' and each failing gate with its measured value and threshold."""
    if row["status"] == "skipped":
        return "skipped"
    bad = [describe(g).removesuffix(" (fail)") for g in row["gates"] if g["passed"] is False]
    unmeasured = [g["gate"] for g in row["gates"] if g["passed"] is None]
    if bad:
        return "FAIL: " + ", ".join(bad)
    return "pass" + (f" ({', '.join(unmeasured)} not measured)" if unmeasured else "")


def public(report: dict) -> dict:
    """The report as files and --json carry it: without the in-memory "_" keys."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def table(report: dict) -> Table:
    ref = report["reference"]
    data = report["data"]
    acc = ref["accuracy"]
    title = (f"{report['model']['arch']} parity on {data['spec']} ({data['images']} images); "
             f"reference {ref['device']}" + (f" top-1 {acc['top1']:.2%}" if acc else ""))
    skipped = sum(row["status"] == "skipped" for row in report["candidates"])
    # what ran, not what the machine has: a GPU machine's rows pinned to the CPU are CPU times
    labels = [ref["device"], *(r["device"] for r in report["candidates"] if r["status"] == "ran")]
    on_cpu = all("(cpu" in str(label).lower() for label in labels)
    cpu_only = "ms/batch: this CPU, not device latency" if on_cpu else ""
    caption = "; ".join(filter(None, [data["accuracy_note"], cpu_only,
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
        t.add_row(row["device"], f"{m['max_abs']:.2e}", percent(m["top1_agreement"]), percent(a and a["top1"]),
                  "-" if not a else f"{a['drop_pt']:+.2f}", f"{lat['p50_ms']:.2f}" if lat else "-",
                  f"[{style}]{gates}[/]")
    return t


def write_json(report: dict, path: str | os.PathLike) -> list[Path]:
    write_json_atomic(path, public(report))
    return []


def write_junit(report: dict, path: str | os.PathLike) -> list[Path]:
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
            detail = describe(g)
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
    return []


def md(text) -> str:
    """`text` as CommonMark (and GitHub's tables, strikethrough and math) shows it, literally,
    and still readable as plain text in a CI log: the characters that could open markup inline
    backslash-escaped (CommonMark 0.31, section 2.4: emphasis * _ ~, code `, links and images
    [ ], raw HTML and autolinks < >, entities &, table cells |, math $, the escape \\ itself),
    and line breaks as spaces. Every punctuation mark escaped read `top\\-1 25\\.00\\%`. Data specs,
    paths and library messages are not ours to render; our text sits after a line's own
    prefix, so what starts a block (#, -, 1.) cannot."""
    return re.sub(r"[\\`*_~\[\]<>&|$]", lambda m: "\\" + m[0], " ".join(str(text).split()))


def write_markdown(report: dict, path: str | os.PathLike) -> list[Path]:
    """Markdown report; the summary picture goes beside it as <name>.png (not beside a device
    or pipe such as /dev/stdout, which has no beside)."""
    path = Path(path)
    picture = None if is_stream(path) else path.with_suffix(".png")
    if picture:
        write_bytes_atomic(picture, plots.summary(report))
    ref, data, machine = report["reference"], report["data"], report["machine"]
    lines = [f"# Parity: {md(plots.title(report))}", "",
             f"- data: {md(data['spec'])}, {data['images']} images, batch {data['batch_size']}"
             + (f" ({md(data['accuracy_note'])})" if data["accuracy_note"] else ""),
             f"- reference: {md(ref['device'])}"
             + (f", top-1 {ref['accuracy']['top1']:.2%}, top-5 {ref['accuracy']['top5']:.2%}"
                if ref["accuracy"] else ""),
             f"- machine: {md(_machine_line(machine))}",
             *(f"- {md(line)}" for line in plots.provenance(report)),
             f"- result: **{'PASS' if report['summary']['passed'] else 'FAIL'}**", "",
             "| backend | max abs | p99 abs | cosine | top-1 agreement | top-1 | drop (pt) | ms/batch p50 | gates |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in report["candidates"]:
        if row["status"] == "skipped":
            lines.append(f"| {row['backend']} {row['precision']} | | | | | | | | skipped: {md(row['reason'])} |")
            continue
        m, a, lat = row["metrics"], row["accuracy"], row["latency"]
        lines.append(f"| {md(row['device'])} | {m['max_abs']:.2e} | {m['p99_abs']:.2e} | {m['cosine']:.6f} "
                     f"| {percent(m['top1_agreement'])} | {percent(a and a['top1'])} "
                     f"| {'-' if not a else format(a['drop_pt'], '+.2f')} "
                     f"| {_ms(lat)} | {_gates_text(row)} |")
    if picture:
        lines += ["", f"![parity summary]({urllib.parse.quote(picture.name)})"]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return [picture] if picture else []


def _ms(latency: dict | None) -> str:
    return f"{latency['p50_ms']:.2f}" if latency else "-"


def _machine_line(machine: dict) -> str:
    gpu = (f"{machine['gpu']} (driver {machine['driver']})" if machine.get("gpu") else "no GPU")
    arithmetic = f", int8 arithmetic {machine['int8_arithmetic']}" if machine.get("int8_arithmetic") else ""
    return f"{machine['cpu']} ({machine['cores']} cores{arithmetic}), {gpu}, {machine['platform']}"


def write_html(report: dict, path: str | os.PathLike) -> list[Path]:
    """One self-contained page (pictures inline), viewable offline."""
    from .html import page
    write_text_atomic(path, page(report))
    return []


def load(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
