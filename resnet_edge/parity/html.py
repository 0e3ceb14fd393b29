"""The parity report as one HTML page: no scripts, no links out, every picture inline, so it
opens the same from a CI artifact, an e-mail or a laptop on a plane."""

from __future__ import annotations

import base64
from html import escape

from . import plots
from .gates import describe
from .plots import percent

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #24292f;
       max-width: 1240px; margin: 24px auto; padding: 0 20px; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.verdict { padding: 2px 10px; border-radius: 6px; color: white; font-size: 18px; }
.verdict.pass, .tag.pass { background: #1a7f37; } .verdict.fail, .tag.fail { background: #cf222e; }
.tag { color: white; border-radius: 4px; padding: 0 6px; font-size: 12px; }
.tag.skipped { background: #8c959f; }
.muted { color: #57606a; } table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #d0d7de; vertical-align: top; }
th { text-align: left; background: #f6f8fa; } td.num { text-align: right;
     font-variant-numeric: tabular-nums; white-space: nowrap; }
ul.gates { margin: 0; padding-left: 16px; font-size: 13px; }
li.fail, p.fail { color: #cf222e; } li.fail { font-weight: 600; }
img.plot { max-width: 100%; border: 1px solid #d0d7de; }
.thumbs { display: flex; flex-wrap: wrap; gap: 10px; }
.thumbs figure { margin: 0; width: 112px; font-size: 12px; }
.thumbs img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #d0d7de; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; } dt { color: #57606a; }
"""


def page(report: dict) -> str:
    passed = report["summary"]["passed"]
    ref, data = report["reference"], report["data"]
    names = report["model"].get("class_names") or []
    verdict = "PASS" if passed else "FAIL"
    reference_top1 = (f", top-1 <b id='reference-top1'>{ref['accuracy']['top1']:.2%}</b>"
                      if ref["accuracy"] else "")
    parts = [
        "<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(plots.title(report))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Parity: {escape(report['model']['arch'])} on <code>{escape(data['spec'])}</code> "
        f"<span id='verdict' class='verdict {verdict.lower()}'>{verdict}</span></h1>",
        f"<p class='muted'>{data['images']} images in batches of {data['batch_size']}; "
        f"reference {escape(ref['device'])}{reference_top1}. "
        + (f"{escape(data['accuracy_note'])}. " if data["accuracy_note"] else "")
        + f"Made {escape(report['created'])} by resnet-edge "
        f"{escape(report['tool']['version'])} from <code>{escape(report['workdir'])}</code>.</p>",
        *(f"<p class='muted provenance'>{escape(line)}.</p>" for line in plots.provenance(report)),
    ]
    failed = [f"{r['backend']} {r['precision']} {describe(g).removesuffix(' (fail)')}"
              for r in report["candidates"] for g in r["gates"] if g["passed"] is False]
    if failed:
        parts.append(f"<p class='fail' id='failed'><b>{len(failed)} gate(s) failed:</b> "
                     f"{escape('; '.join(failed))}</p>")
    parts += ["<h2>Backends</h2>", _candidates(report), "<h2>Skipped</h2>", _skipped(report)]
    parts += ["<h2>Accuracy, latency and logit error</h2>",
              _img(plots.summary(report), "accuracy against latency, and logit error per candidate")]
    distribution = plots.error_distributions(report)
    parts += ["<h2>Logit error distribution</h2>",
              _img(distribution, "share of images by largest logit error, log scale") if distribution
              else "<p class='muted'>no candidate ran</p>"]
    picture, note = plots.class_changes(report)
    parts += ["<h2>Per-class accuracy change</h2>",
              _img(picture, f"per-class top-1 change: {note}") if picture
              else f"<p class='muted'>{escape(note)}</p>"]
    parts += ["<h2>Where a candidate disagrees with the reference</h2>",
              _disagreements(report, names)]
    parts += ["<h2>Thresholds</h2>", _thresholds(report),
              "<h2>Machine and versions</h2>", _machine(report), "</body></html>"]
    return "\n".join(parts) + "\n"


def _img(png: bytes, alt: str) -> str:
    return (f"<img class='plot' alt='{escape(alt)}' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")


def _candidates(report: dict) -> str:
    rows = ["<table id='candidates'><tr><th>backend</th><th>device</th><th>result</th>"
            "<th>max abs</th><th>p99 abs</th><th>cosine</th><th>top-1 agreement</th>"
            "<th>top-1</th><th>drop (pt)</th><th>ms/batch p50</th><th>gates</th></tr>"]
    for row in report["candidates"]:
        if row["status"] == "skipped":
            continue
        m, a, lat = row["metrics"], row["accuracy"], row["latency"]
        verdict = plots.verdict(row)
        gates = "".join(f"<li class='{'fail' if g['passed'] is False else ''}'>{escape(describe(g))}</li>"
                        for g in row["gates"])
        key = f"{row['backend']}-{row['precision']}"
        rows.append(
            f"<tr id='row-{key}'><td>{row['backend']} {row['precision']}</td>"
            f"<td>{escape(row['device'])}</td>"
            f"<td><span class='tag {verdict.lower()}'>{verdict}</span></td>"
            f"<td class='num'>{m['max_abs']:.2e}</td><td class='num'>{m['p99_abs']:.2e}</td>"
            f"<td class='num'>{m['cosine']:.6f}</td>"
            f"<td class='num' data-metric='top1_agreement'>{percent(m['top1_agreement'])}</td>"
            f"<td class='num'>{percent(a and a['top1'])}</td>"
            f"<td class='num'>{'-' if not a else format(a['drop_pt'], '+.2f')}</td>"
            f"<td class='num'>{'-' if not lat else format(lat['p50_ms'], '.2f')}</td>"
            f"<td><ul class='gates'>{gates}</ul></td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _skipped(report: dict) -> str:
    skipped = [r for r in report["candidates"] if r["status"] == "skipped"]
    if not skipped:
        return "<p class='muted'>none: every backend and precision asked for ran</p>"
    body = "".join(f"<tr><td>{r['backend']} {r['precision']}</td><td>{escape(r['reason'])}</td></tr>"
                   for r in skipped)
    return f"<table id='skipped'><tr><th>backend</th><th>why it did not run</th></tr>{body}</table>"


def _disagreements(report: dict, names: list[str]) -> str:
    thumbnails = report.get("_thumbnails")
    if thumbnails is None:
        return "<p class='muted'>not collected for this report</p>"

    def name(c):
        return "-" if c is None else escape(names[c] if c < len(names) else str(c))

    parts = []
    for row in report["candidates"]:
        if row["status"] != "ran":
            continue
        found = row.get("disagreements") or []
        parts.append(f"<h3>{row['backend']} {row['precision']}: "
                     f"{100 - row['metrics']['top1_agreement'] * 100:.2f} % of images disagree"
                     + (f" (first {len(found)} shown)" if found else "") + "</h3>")
        if not found:
            parts.append("<p class='muted'>none: the same top-1 as the reference on every image</p>")
            continue
        figures = []
        for d in found:
            png = thumbnails.get(d["image"])
            img = (f"<img alt='image {d['image']}' src='data:image/png;base64,"
                   f"{base64.b64encode(png).decode()}'>" if png else "")
            label = "" if d["label"] is None else f"label {name(d['label'])}<br>"
            figures.append(f"<figure>{img}<figcaption>#{d['image']}<br>{label}"
                           f"reference {name(d['reference'])}<br>"
                           f"<b>{escape(row['backend'])} {name(d['candidate'])}</b></figcaption></figure>")
        parts.append(f"<div class='thumbs'>{''.join(figures)}</div>")
    return "".join(parts) or "<p class='muted'>no candidate ran</p>"


def _thresholds(report: dict) -> str:
    keys = sorted({k for t in report["thresholds"].values() for k in t})
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{escape(p)}</td>"
        + "".join(f"<td class='num'>{'-' if t.get(k) is None else format(t[k], 'g')}</td>" for k in keys)
        + "</tr>" for p, t in report["thresholds"].items())
    return (f"<table id='thresholds'><tr><th>precision</th>{head}</tr>{body}</table>"
            "<p class='muted'>_pct: percent; _pt: percentage points; unset gates are off</p>")


def _int8_path(path: dict) -> str:
    """How ONNX Runtime ran an int8 model, and for fused kernels how far they are from the
    same model's exact arithmetic (a saturating kernel shows as disagreement here)."""
    ops = ", ".join(f"{k} x{v}" for k, v in (path.get("integer_ops") or {}).items())
    text = path["path"] + (f" ({ops})" if ops else "")
    if path.get("weight_bits"):
        text += f", {path['weight_bits']}-bit weights"
    fused = path.get("fused_vs_as_written")
    if fused:
        text += (f"; fused vs Q/DQ as written: top-1 agreement {percent(fused['top1_agreement'])}, "
                 f"max abs {fused['max_abs']:.2e}")
    return text


def _machine(report: dict) -> str:
    machine = report["machine"]
    facts = {"CPU": f"{machine['cpu']} ({machine['cores']} cores)",
             "GPU": (f"{machine['gpu']} (driver {machine.get('driver')})" if machine.get("gpu")
                     else "none"),
             "CPU int8 features": ", ".join(machine.get("cpu_features") or []) or "none listed",
             "CPU int8 arithmetic": machine.get("int8_arithmetic", "not recorded"),
             **{f"int8 path: {r['backend']} {r['precision']}": _int8_path(r["int8_path"])
                for r in report["candidates"] if r.get("int8_path")},
             "platform": machine["platform"], **machine.get("versions", {})}
    hashes = report.get("artifacts") or {}
    body = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>" for k, v in facts.items())
    files = "".join(f"<dt>{escape(str(k))}</dt><dd><code>{escape(str(v))}</code></dd>"
                    for k, v in hashes.items())
    return (f"<dl id='machine'>{body}</dl>"
            + (f"<h3>Files measured (sha256)</h3><dl>{files}</dl>" if files else ""))
