"""Many runs on one page: parity and bench reports from a CI matrix or a fleet of devices,
merged into one matrix of backend x precision (x batch for latency) by run, each run's column
headed by where it ran and linked to its report, baseline verdicts marked where a run had one.
Reports of another model are refused, never merged."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from .. import strictjson
from ..errors import BadInput, well_formed
from ..runtime.bench import SCHEMA as BENCH_SCHEMA
from .html import STYLE
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
            reports.append((Path(path), strictjson.read_report(path, (PARITY_SCHEMA, BENCH_SCHEMA), "report")))
        except ValueError as exc:
            raise BadInput(f"{exc}; give `parity --json` or `bench --json` reports") from None
    first_path, first = reports[0]
    for path, report in reports:
        with well_formed(path, "report"):
            where(report)
            model, first_model = report["model"], first["model"]
            if not isinstance(model["arch"], str):
                raise TypeError(f"model arch {model['arch']!r} is not a name")
        for key in ("arch", "num_classes"):
            if model.get(key) != first_model.get(key):
                raise BadInput(f"{path} is of another model ({key} {model.get(key)!r}, "
                               f"{first_path} {first_model.get(key)!r}); merge runs of one model")
    return reports


def where(report: dict) -> str:
    """Where a run ran, as its report says: the GPU (or CPU), and a Jetson's power mode."""
    machine = report.get("machine", {})
    place = machine.get("gpu") or machine.get("cpu") or "unknown machine"
    jetson = machine.get("jetson") or {}
    return f"{place}, {jetson['power_mode']}" if jetson.get("power_mode") else place


def matrix(reports: list[tuple[Path, dict]]) -> tuple[list[str], dict[tuple, list[str]]]:
    """(row keys in order, {row key: one cell per report}); a row is ("accuracy", backend,
    precision, "") from parity or ("latency", backend, precision, batch) from bench."""
    cells: dict[tuple, list[str]] = {}
    for column, (path, report) in enumerate(reports):
        with well_formed(path, "report"):
            _column(cells, column, len(reports), report)
    return sorted(cells, key=lambda k: (k[0], k[1], k[2], str(k[3]))), cells


def _column(cells: dict[tuple, list[str]], column: int, columns: int, report: dict) -> None:
    verdicts = {(r["backend"], r["precision"], r.get("batch_size", "")): r["verdict"]
                for r in report.get("baseline", {}).get("rows", [])}
    for key, text in _cells(report):
        mark = verdicts.get(key[1:])
        row = cells.setdefault(key, [""] * columns)
        row[column] = text + (f" [{mark}]" if mark and mark != "no baseline" else "")


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
            yield key, f"{top1}agreement {percent(row['metrics']['top1_agreement'])}"
    else:
        for row in report["results"]:
            host = row["host_to_host"]
            yield (_key("latency", row, host["batch_size"]),
                   f"p50 {host['p50_ms']:.2f} ms, {host['images_per_s']:.0f} img/s")


def page(reports: list[tuple[Path, dict]], out: Path) -> str:
    keys, cells = matrix(reports)
    heads = "".join(f"<th><a href='{escape(os.path.relpath(path, out.parent))}'>{escape(path.name)}</a>"
                    f"<br><span class='muted'>{escape(where(report))}</span></th>"
                    for path, report in reports)
    rows = "".join(
        f"<tr><td>{escape(kind)}</td><td>{escape(backend)} {escape(precision)}</td>"
        f"<td class='num'>{escape(str(batch))}</td>"
        + "".join(f"<td class='{_klass(text)}'>{escape(text)}</td>" for text in cells[(kind, backend, precision, batch)])
        + "</tr>" for kind, backend, precision, batch in keys)
    model = reports[0][1]["model"]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(model['arch'])}: {len(reports)} runs</title><style>{STYLE}"
            "td.regression { color: #cf222e; font-weight: 600; }</style></head><body>"
            f"<h1>{escape(model['arch'])}: {len(reports)} runs</h1>"
            "<p class='muted'>Accuracy rows from parity reports, latency rows (by batch) from bench "
            "reports; [regression], [inconclusive] and [pass] mark a run's own baseline verdicts.</p>"
            f"<table id='fleet'><tr><th>kind</th><th>backend</th><th>batch</th>{heads}</tr>{rows}</table>"
            "</body></html>\n")


def _klass(text: str) -> str:
    return "regression" if "[regression]" in text else "num"


def markdown(reports: list[tuple[Path, dict]]) -> str:
    keys, cells = matrix(reports)
    head = " | ".join(md(f"{path.name} ({where(report)})") for path, report in reports)
    lines = [f"# {md(reports[0][1]['model']['arch'])}: {len(reports)} runs", "",
             f"| kind | backend | batch | {head} |", "|---|---|---:|" + "---|" * len(reports)]
    lines += [f"| {kind} | {md(backend)} {md(precision)} | {batch} | "
              + " | ".join(md(text) for text in cells[(kind, backend, precision, batch)]) + " |"
              for kind, backend, precision, batch in keys]
    return "\n".join(lines) + "\n"
