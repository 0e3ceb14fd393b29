"""Reports read back (by `report`, as a bench or parity baseline) as strictly as any other input:
regular files only, bounded nesting, numbers that are numbers, finite and in range; and what
they say printed as text, never as Rich markup or terminal control."""

import json
import os
import threading
import time

import numpy as np
import pytest

from cli_output import one_line_error
from resnet_edge.runtime import regression


def _write(tmp_path, name, report):
    path = tmp_path / name
    path.write_text(report if isinstance(report, str) else json.dumps(report))
    return path


def _bench(run_cli, workdir, baseline, *extra):
    return run_cli("bench", workdir, "--backends", "ort", "--precisions", "fp32", "--batch-sizes", "1,8",
                   "--iterations", "20", "--baseline", baseline, *extra)


def _with(report, change):
    changed = json.loads(json.dumps(report))
    change(changed)
    return changed


def _sample(row, value):
    row["host_to_host"]["samples_ms"][0] = value


BAD_BENCH = [
    (lambda r: r["results"][0]["host_to_host"].update(p50_ms=10 ** 400), "an integer of 401 digits"),
    (lambda r: r["results"][0]["host_to_host"].update(p50_ms="1e999"), "p50_ms holds \"1e999\", not a number"),
    (lambda r: _sample(r["results"][0], "2.5"), "samples_ms holds \"2.5\", not a number"),
    (lambda r: _sample(r["results"][0], True), "samples_ms holds true, not a number"),
    (lambda r: r.update(extra=json.loads("[" * 40 + "]" * 40)), "nested deeper than 32 levels"),
    # a row no batch matches went ungated ("no baseline", exit 0)
    (lambda r: r["results"][0]["host_to_host"].update(batch_size=8.5), "batch_size 8.5 is not a whole number"),
    (lambda r: r["results"][0]["host_to_host"].update(batch_size=10 ** 12), "batch_size 1000000000000 is not a whole number from 1"),
]


@pytest.mark.parametrize("change,said", BAD_BENCH)
def test_a_bench_baseline_holding_what_no_report_holds_is_refused_before_the_work(
        change, said, measured, digits_workdir, tmp_path, run_cli):
    path = _write(tmp_path, "old.json", _with(measured, change))
    one_line_error(_bench(run_cli, digits_workdir, path), 2, said)


def test_infinity_written_as_a_huge_float_is_refused(measured, digits_workdir, tmp_path, run_cli):
    text = json.dumps(measured).replace('"samples_ms": [', '"samples_ms": [1e999, ', 1)
    one_line_error(_bench(run_cli, digits_workdir, _write(tmp_path, "old.json", text)), 2,
                   "1e999 is beyond any number a report holds")


@pytest.mark.parametrize("change,said", [
    (lambda r: r["candidates"][0]["metrics"].update(top1_agreement=False), "top1_agreement holds false"),
    (lambda r: r["candidates"][0]["accuracy"].update(top1=1.5), "top1 1.5 is not a fraction"),
])
def test_a_parity_baseline_holding_what_no_report_holds_is_refused(change, said, parity_main,
                                                                   calibrated_workdir, tmp_path, run_cli):
    path = _write(tmp_path, "old.json", _with(parity_main, change))
    one_line_error(run_cli("parity", calibrated_workdir, "--backends", "ort", "--precisions", "fp32",
                           "--limit", "16", "--baseline", path), 2, said)


def test_a_deeply_nested_report_is_one_line_not_a_recursion_error(tmp_path, run_cli):
    path = _write(tmp_path, "deep.json", '{"schema": "resnet-edge.bench/1", "x": ' + "[" * 200_000
                  + "]" * 200_000 + "}")
    one_line_error(run_cli("report", path), 2, "nested deeper than 32 levels")


def _fifo_with_a_late_writer(path):
    """A FIFO whose writer never comes: reading it would wait forever."""
    os.mkfifo(path)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["report", "bench", "parity", "debug", "thresholds"])
def test_a_fifo_is_refused_not_waited_on(command, digits_workdir, tmp_path, run_cli):
    fifo = _fifo_with_a_late_writer(tmp_path / "pipe.json")
    args = {"report": ("report", fifo),
            "bench": ("bench", digits_workdir, "--baseline", fifo),
            "parity": ("parity", digits_workdir, "--baseline", fifo),
            "debug": ("debug", digits_workdir, "--candidate", fifo),
            "thresholds": ("parity", digits_workdir, "--thresholds", fifo)}[command]
    started = time.monotonic()
    one_line_error(run_cli(*args), 2, "pipe.json is not a regular file")
    assert time.monotonic() - started < 30


def test_rich_markup_and_terminal_controls_from_a_report_print_as_text(measured, tmp_path, run_cli):
    """A report's arch, machine and file name, and a baseline's path, are text: `[/]` ended a
    finished run in rich.errors.MarkupError, and ESC sequences retitled or cleared the terminal."""
    hostile = _with(measured, lambda r: (r["model"].update(arch="r20[/]\x1b]0;owned\x07"),
                                         r["machine"].update(cpu="[bold red]cpu[/]\x1b[2J")))
    folder = tmp_path / "run [red]"
    folder.mkdir()
    path = _write(folder, "b[bold].json", hostile)
    result = run_cli("report", path, "--json", tmp_path / "merged.json")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "r20[/]\\x1b]0;owned\\x07" in result.stdout and "[bold red]cpu[/]\\x1b[2J" in result.stdout
    assert (tmp_path / "merged.json").is_file()  # the finished run's JSON is written


def test_a_baseline_path_with_markup_prints_as_text(measured, digits_workdir, tmp_path, run_cli):
    path = _write(tmp_path, "main[bold]\x1b[2J.json", measured)
    result = _bench(run_cli, digits_workdir, path, "--max-latency-regression-pct", "1000")
    assert result.exit_code == 0, result.output
    assert "main[bold]\\x1b[2J.json" in result.stdout and "\x1b" not in result.stdout


def test_error_lines_show_control_characters_escaped(tmp_path, run_cli):
    one_line_error(run_cli("report", tmp_path / "gone\x1b[2J.json"), 2, "gone\\x1b[2J.json")


def test_a_baseline_of_millions_of_samples_is_judged_in_bounded_memory_and_time():
    """4 M samples a row made the bootstrap allocate 2000 x 4 M numbers (59.6 GiB)."""
    rng = np.random.default_rng(0)
    old = rng.lognormal(np.log(5.0), 0.05, 4_000_000)
    new = rng.lognormal(np.log(6.5), 0.05, 1000)
    done = {}
    worker = threading.Thread(target=lambda: done.update(verdict=regression.judge(old, new)), daemon=True)
    worker.start()
    worker.join(120)
    assert done["verdict"]["verdict"] == "regression" and 1.25 < done["verdict"]["ratio"] < 1.35


def test_every_report_shape_the_commands_write_reads_back(digits_workdir, measured, tmp_path, run_cli):
    """A genuine `parity --json` was refused whenever a class had no images (per_class holds
    null), so no --limit run and no ImageNet subset could be merged. Each shape here comes from
    the commands themselves: a subset of the classes, a row skipped with its reason, no labels,
    a bench of some batch sizes."""
    from resnet_edge import strictjson
    shapes = {
        # digits:test's first 12 images miss some classes
        "subset.json": ("--limit", "12", "--backends", "ort", "--precisions", "fp32"),
        # int8 asked for on an uncalibrated model, no backend named: its rows skipped, exit 0
        "skipped.json": ("--limit", "16", "--precisions", "fp32,int8"),
        "unlabelled.json": ("--data", "random:16", "--backends", "ort", "--precisions", "fp32"),
    }
    paths = []
    for name, args in shapes.items():
        result = run_cli("parity", digits_workdir, *args, "--json", tmp_path / name)
        assert result.exit_code == 0, result.output
        paths.append(tmp_path / name)
    subset = json.loads((tmp_path / "subset.json").read_text())
    assert None in subset["candidates"][0]["accuracy"]["per_class"]
    skipped = json.loads((tmp_path / "skipped.json").read_text())
    assert any(r["status"] == "skipped" for r in skipped["candidates"])
    bench = _write(tmp_path, "bench.json", measured)
    for path in (*paths, bench):
        strictjson.read_report(path, ("resnet-edge.parity/1", "resnet-edge.bench/1"), "report")
    for group in (paths[:1] + paths[1:2], paths[:1] + paths[2:], [paths[0], bench]):
        result = run_cli("report", *group, "--json", tmp_path / "merged.json")
        assert result.exit_code == 0, result.output


def test_lone_surrogates_and_bidi_controls_print_escaped_and_every_output_is_written(
        measured, tmp_path, run_cli):
    """A lone surrogate (valid JSON: "\\ud800") ended `report` in UnicodeEncodeError with no
    --json or --html written; U+202E reached the terminal raw and reordered the line."""
    text = json.dumps(_with(measured, lambda r: r["machine"].update(cpu="cpu\ud800x\u202eabc\u2066")))
    path = _write(tmp_path, "odd.json", text)
    result = run_cli("report", path, "--json", tmp_path / "m.json", "--html", tmp_path / "m.html",
                     "--markdown", tmp_path / "m.md")
    assert result.exit_code == 0, result.output
    assert "cpu\\ud800x\\u202eabc\\u2066" in result.stdout
    assert not any(c in result.stdout for c in "\u202e\u2066")
    for name in ("m.json", "m.html", "m.md"):
        assert "\u202e" not in (tmp_path / name).read_text()


def test_a_huge_field_is_cut_for_display(measured, tmp_path, run_cli):
    """A 10 MB machine.gpu (far under the 256 MiB cap) printed and wrote nothing in 200 s: the
    column folded it into 280,000 lines. A field is shown cut, with how much was left out."""
    path = _write(tmp_path, "huge.json", _with(measured, lambda r: r["machine"].update(cpu="x" * 2_000_000)))
    result = run_cli("report", path, measured_path := _write(tmp_path, "b.json", measured),
                     "--html", tmp_path / "m.html")
    assert result.exit_code == 0, result.output
    assert "more characters)" in result.stdout and len(result.stdout) < 100_000
    assert measured_path.is_file() and (tmp_path / "m.html").stat().st_size < 100_000


def test_names_printed_after_wrote_cannot_forge_a_line(digits_workdir, tmp_path, run_cli):
    result = run_cli("parity", digits_workdir, "--backends", "ort", "--precisions", "fp32", "--limit", "8",
                     "--json", tmp_path / "x\nerror: fake.json")
    assert result.exit_code == 0, result.output
    assert "x\\nerror: fake.json" in result.stdout
    assert not any(line.startswith("error: fake") for line in result.stdout.splitlines())


def test_verify_py_prints_what_a_terminal_would_act_on_escaped(capsys):
    """verify.py's own lines (a manifest's reason text among them) went to the terminal raw."""
    from resnet_edge.deploy.verify_bundle import say
    say("bundle r20\x1b]0;owned\x07 \u202eexe.txt \ud800")
    out = capsys.readouterr().out
    assert out == "bundle r20\\x1b]0;owned\\x07 \\u202eexe.txt \\ud800\n"
