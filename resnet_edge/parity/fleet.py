"""Many runs on one page: parity and bench reports from a CI matrix, and the verify.json each
device of a fleet wrote (`deploy` brings them home), merged into one matrix of backend x
precision (x batch for latency) by run, each run's column headed by where it ran and linked to
its report, baseline verdicts marked where a run had one. Reports of another model are refused,
never merged."""

from __future__ import annotations

import os
import re
import urllib.parse
from html import escape
from pathlib import Path

from .. import strictjson
from ..errors import BadInput, well_formed
from ..bench import SCHEMA as BENCH_SCHEMA
from .html import STYLE
from .gates import VERIFY_SCHEMA
from .plots import percent
from .report import md
from .run import SCHEMA as PARITY_SCHEMA


def read_reports(paths: list[Path]) -> list[tuple[Path, dict]]:
    """Each report checked (JSON, a parity or bench format) and all of one model."""
    if not paths:
        raise BadInput("give at least one `parity --json` or `bench --json` report")
    reports = []
    for path in paths:
        try:
            report = strictjson.read_report(path, (PARITY_SCHEMA, BENCH_SCHEMA, VERIFY_SCHEMA), "report")
        except ValueError as exc:
            raise BadInput(f"{exc}; give `parity --json` or `bench --json` reports, or a "
                           "device's verify.json") from None
        with well_formed(path, "report"):
            reports.append((Path(path), as_run(report)))
    first_path, first = reports[0]
    for path, report in reports:
        with well_formed(path, "report"):
            where(report)
            differences([(path, report)])  # every machine field it reads is of its type
            model, first_model = report["model"], first["model"]
            if not isinstance(model["arch"], str):
                raise TypeError(f"model arch {model['arch']!r} is not a name")
        for key in ("arch", "num_classes"):
            if model.get(key) != first_model.get(key):
                raise BadInput(f"{path} is of another model ({key} {model.get(key)!r}, "
                               f"{first_path} {first_model.get(key)!r}); merge runs of one model")
    return reports


def as_run(report: dict) -> dict:
    """A device's verify.json seen as a run: its bundle's model, and its device as the machine
    (a Jetson's L4T and power mode, the TensorRT, ONNX Runtime and Python it ran with)."""
    if report["schema"] != VERIFY_SCHEMA:
        return report
    device, bundle = report["device"], report["bundle"]
    versions = {name: device[name] for name in ("tensorrt", "onnxruntime", "python") if device.get(name)}
    jetson = {"l4t": device.get("l4t"), "power_mode": device.get("power_mode")}
    l4t = (device.get("l4t") or "").lstrip("# ").split(", GCID")[0]  # "R36 (release), REVISION: 4.0"
    return {**report, "model": {"arch": bundle["arch"], "num_classes": bundle["num_classes"]},
            "machine": {"gpu": device.get("gpu"), "cpu": f"L4T {l4t}" if l4t else device.get("platform"),
                        "jetson": jetson if any(jetson.values()) else None, "versions": versions}}


def summary(reports: list[tuple[Path, dict]]) -> dict:
    """The merged matrix as `report --json` writes it: each run (file, where it ran), each row
    with one cell per run, and what differs between the runs' machines and libraries."""
    keys, cells = matrix(reports)
    return {"runs": [{"report": str(path), "where": where(run)} for path, run in reports],
            "rows": [{"kind": k, "backend": b, "precision": p, "batch": n, "cells": cells[(k, b, p, n)]}
                     for k, b, p, n in keys],
            "differences": [{"what": field, "values": values} for field, values in differences(reports)]}


def names(reports: list[tuple[Path, dict]]) -> list[str]:
    """Each run's heading: its file name, with as many parent folders as it takes to tell the
    runs apart (a CI matrix's artifacts are all parity.json, in folders named by job)."""
    parts = [Path(path).resolve().parts for path, _ in reports]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def where(report: dict) -> str:
    """Where a run ran, as its report says: the GPU (or CPU), and a Jetson's power mode."""
    machine = report.get("machine", {})
    place = machine.get("gpu") or machine.get("cpu") or "unknown machine"
    jetson = machine.get("jetson") or {}
    place = f"{place}, {jetson['power_mode']}" if jetson.get("power_mode") else place
    return strictjson.cut(str(place))


def matrix(reports: list[tuple[Path, dict]]) -> tuple[list[str], dict[tuple, list[str]]]:
    """(row keys in order, {row key: one cell per report}); a row is ("accuracy", backend,
    precision, "") from parity or ("latency", backend, precision, batch) from bench."""
    cells: dict[tuple, list[str]] = {}
    for column, (path, report) in enumerate(reports):
        with well_formed(path, "report"):
            _column(cells, column, len(reports), report)
    return sorted(cells, key=lambda k: (k[0], k[1], k[2], str(k[3]))), cells


def _column(cells: dict[tuple, list[str]], column: int, columns: int, report: dict) -> None:
    marks = {(r["backend"], r["precision"], r.get("batch_size", "")): _mark(r)
             for r in report.get("baseline", {}).get("rows", []) if r["verdict"] != "no baseline"}
    for key, text in _cells(report):
        mark = marks.get(key[1:])
        row = cells.setdefault(key, [""] * columns)
        row[column] = text + (f" [{mark}]" if mark else "")


def _mark(row: dict) -> str:
    """A run's own baseline verdict with the change it judged: the p50 ratio for latency, the
    change in points for accuracy (top-1 where labelled, else agreement)."""
    if "ratio" in row:
        return f"{row['verdict']} x{row['ratio']:.2f}"
    change = row.get("top1_change_pt")
    change = row.get("agreement_change_pt") if change is None else change
    return row["verdict"] if change is None else f"{row['verdict']} {change:+.2f} pt"


def _key(kind: str, row: dict, batch) -> tuple:
    if not (isinstance(row["backend"], str) and isinstance(row["precision"], str)
            and (batch == "" or (isinstance(batch, int) and not isinstance(batch, bool)))):
        raise TypeError(f"row {row['backend']!r} {row['precision']!r} batch {batch!r} is not "
                        "backend and precision names with a whole batch size")
    return kind, row["backend"], row["precision"], batch


def _cells(report: dict):
    if report["schema"] == PARITY_SCHEMA:
        for row in report["candidates"]:
            key = _key("accuracy", row, "")
            if row["status"] != "ran":
                yield key, "skipped"
                continue
            top1 = f"top-1 {percent(row['accuracy']['top1'])}, " if row["accuracy"] else ""
            yield key, (f"{top1}agreement {percent(row['metrics']['top1_agreement'])}, "
                        f"max abs {row['metrics']['max_abs']:.2e}")
    elif report["schema"] == VERIFY_SCHEMA:  # a device's verify.py: its gates and latency
        for row in report["results"]:
            latency = row["latency"]["host_to_host"]
            decisive = row["metrics"]["decisive"]
            failed = [g["gate"] for g in row["gates"] if g.get("passed") is False]
            yield (_key("verify", row, latency["batch_size"]),
                   ("FAIL " + ", ".join(map(str, failed)) if failed else "pass")
                   + f", agreement {decisive['agree']}/{decisive['images']}, p50 {latency['p50_ms']:.2f} ms")
    else:
        for row in report["results"]:
            host = row["host_to_host"]
            yield (_key("latency", row, host["batch_size"]),
                   f"p50 {host['p50_ms']:.2f} ms, {host['images_per_s']:.0f} img/s" + _energy(row))


def _energy(row: dict) -> str:
    """The energy an image took, where bench read power: the whole board or module when a rail
    is that, else each rail, named, since a Jetson without an input rail has no total."""
    power = row.get("power") or {}
    per_image = power.get("mj_per_image")
    if not per_image:
        return ""
    total = power.get("total_rail")
    rails = [total] if total else sorted(per_image)
    return ", " + ", ".join(f"{per_image[r]:.2f} mJ/img {r}" for r in rails)


PROVENANCE = ("cpu", "cores", "gpu", "driver", "jetson.l4t", "jetson.power_mode", "jetson.clocks")


def differences(reports: list[tuple[Path, dict]]) -> list[tuple[str, list[str]]]:
    """What decides whether the runs' numbers compare, where they differ: the machine, a
    Jetson's release, power mode and clocks, every library version any run records, and the
    model files each measured (sha256), where two runs that measured a file differ on it."""
    def value(report: dict, field: str):
        where_, _, name = field.partition(".")
        if where_ == "files":
            digest = (report.get("artifacts") or {}).get(name)
            return digest[:12] if isinstance(digest, str) else None
        found = report.get("machine", {}).get(where_)
        return (found or {}).get(name) if name else found
    versions = sorted({f"versions.{name}" for _, r in reports
                       for name in (r.get("machine", {}).get("versions") or {})})
    files = sorted({f"files.{name}" for _, r in reports for name in (r.get("artifacts") or {})})
    rows = []
    for field in (*PROVENANCE, *versions, *files):
        values = ["-" if value(r, field) is None else strictjson.cut(str(value(r, field)))
                  for _, r in reports]
        measured = {v for v in values if v != "-"}
        if len(set(values)) > 1 and (not field.startswith("files.") or len(measured) > 1):
            rows.append((field, values))
    return rows


def page(reports: list[tuple[Path, dict]], out: Path) -> str:
    keys, cells = matrix(reports)
    heads = "".join(f"<th><a href='{escape(_href(path, out))}'>{escape(name)}</a>"
                    f"<br><span class='muted'>{escape(where(report))}</span></th>"
                    for name, (path, report) in zip(names(reports), reports))
    rows = "".join(
        f"<tr><td>{escape(kind)}</td><td>{escape(backend)} {escape(precision)}</td>"
        f"<td class='num'>{escape(str(batch))}</td>"
        + "".join(f"<td class='{_klass(text)}'>{escape(text)}</td>" for text in cells[(kind, backend, precision, batch)])
        + "</tr>" for kind, backend, precision, batch in keys)
    model = reports[0][1]["model"]
    differ = differences(reports)
    provenance = ("<h2>Where the runs differ</h2><table id='differences'><tr><th>what</th>"
                  + "".join(f"<th>{escape(name)}</th>" for name in names(reports)) + "</tr>"
                  + "".join(f"<tr><td>{escape(field)}</td>"
                            + "".join(f"<td>{escape(v)}</td>" for v in values) + "</tr>"
                            for field, values in differ) + "</table>"
                  if differ else "<p class='muted'>The runs record the same machine, libraries and "
                  "model files.</p>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(model['arch'])}: {len(reports)} runs</title><style>{STYLE}"
            "td.regression { color: #cf222e; font-weight: 600; } td.inconclusive { color: #9a6700; } "
            "td.pass { color: #1a7f37; }</style></head><body>"
            f"<h1>{escape(model['arch'])}: {len(reports)} runs</h1>"
            "<p class='muted'>Accuracy rows from parity reports, latency rows (by batch) from bench "
            "reports, with energy per image where bench read power. [regression], [inconclusive] "
            "and [pass] mark a run's own baseline verdicts, with the change judged: the p50 ratio "
            "(new / baseline) or the change in points.</p>"
            f"<table id='fleet'><tr><th>kind</th><th>backend</th><th>batch</th>{heads}</tr>{rows}</table>"
            f"{provenance}</body></html>\n")


def _href(report: Path, page: Path) -> str:
    """A report's link from the page: a relative path, percent-encoded, so no file name
    (`javascript:alert(1)`, `https://...`) can read as a scheme; the page runs no script."""
    return urllib.parse.quote(os.path.relpath(os.path.abspath(report), os.path.abspath(page.parent)))


def _klass(text: str) -> str:
    verdict = re.search(r"\[(regression|inconclusive|pass)\b", text)
    return verdict.group(1) if verdict else "num"


def markdown(reports: list[tuple[Path, dict]]) -> str:
    keys, cells = matrix(reports)
    head = " | ".join(md(f"{name} ({where(report)})") for name, (_, report) in zip(names(reports), reports))
    lines = [f"# {md(reports[0][1]['model']['arch'])}: {len(reports)} runs", "",
             f"| kind | backend | batch | {head} |", "|---|---|---:|" + "---|" * len(reports)]
    lines += [f"| {kind} | {md(backend)} {md(precision)} | {batch} | "
              + " | ".join(md(text) for text in cells[(kind, backend, precision, batch)]) + " |"
              for kind, backend, precision, batch in keys]
    differ = differences(reports)
    if differ:
        lines += ["", "## Where the runs differ", "",
                  "| what | " + " | ".join(md(name) for name in names(reports)) + " |",
                  "|---|" + "---|" * len(reports)]
        lines += [f"| {md(field)} | " + " | ".join(md(v) for v in values) + " |" for field, values in differ]
    return "\n".join(lines) + "\n"
