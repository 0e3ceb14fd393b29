"""The latency regression gate, on sample sets with known shifts and noise, and `bench
--baseline` on real runs."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from cli_output import one_line_error
from resnet_edge.runtime import regression


def _runs(rng, shift, noise, n=100):
    """Two sets of latency samples (ms) with `noise` relative spread, the second `shift` slower."""
    base = rng.lognormal(np.log(5.0), noise, n)
    return base, rng.lognormal(np.log(5.0 * (1 + shift)), noise, n)


@pytest.mark.parametrize("shift,noise,verdicts", [
    (0.0, 0.05, {"pass"}),                  # identical distributions: never a false alarm here
    (0.30, 0.05, {"regression"}),           # 30 % slower, quiet machine: caught every time
    (-0.20, 0.05, {"pass"}),                # faster is never a regression
])
def test_the_gate_tells_shifts_from_noise(shift, noise, verdicts):
    rng = np.random.default_rng(0)
    seen = {regression.judge(*_runs(rng, shift, noise), max_regression_pct=10)["verdict"]
            for _ in range(40)}
    assert seen == verdicts, seen


def test_a_noisy_machine_gets_inconclusive_not_a_guess():
    """15 % slower where the spread is 60 %: a 95 % interval is wrong about 1 time in 20."""
    rng = np.random.default_rng(0)
    verdicts = [regression.judge(*_runs(rng, 0.15, 0.6))["verdict"] for _ in range(40)]
    assert verdicts.count("inconclusive") >= 36 and verdicts.count("pass") <= 2, verdicts


def test_the_false_alarm_rate_on_identical_noisy_runs_is_small():
    rng = np.random.default_rng(1)
    verdicts = [regression.judge(*_runs(rng, 0.0, 0.3))["verdict"] for _ in range(100)]
    assert verdicts.count("regression") <= 2 and "pass" in verdicts


def _baseline(report, tmp_path, scale=1.0, **machine):
    changed = json.loads(json.dumps(report))
    for row in changed["results"]:
        row["host_to_host"]["samples_ms"] = [v * scale for v in row["host_to_host"]["samples_ms"]]
    changed["machine"].update(machine)
    path = tmp_path / f"baseline-{scale}.json"
    path.write_text(json.dumps(changed))
    return path


def _bench(run_cli, workdir, baseline, *extra):
    return run_cli("bench", workdir, "--backends", "ort", "--precisions", "fp32", "--batch-sizes", "1,8",
                   "--iterations", "60", "--baseline", baseline, *extra)


def test_a_slower_run_than_its_baseline_fails_and_a_faster_one_passes(measured, digits_workdir,
                                                                      tmp_path, run_cli):
    # main ran 4x faster than this run will: a regression whatever the machine's noise
    slower = _bench(run_cli, digits_workdir, _baseline(measured, tmp_path, 0.25))
    one_line_error(slower, 1, "latency regression against the baseline: ort fp32 (CPU) batch 1 p50 x")
    assert "regression" in slower.stdout
    faster = _bench(run_cli, digits_workdir, _baseline(measured, tmp_path, 4.0), "--json", tmp_path / "b.json")
    assert faster.exit_code == 0, faster.output
    compared = json.loads((tmp_path / "b.json").read_text())["baseline"]
    assert {r["verdict"] for r in compared["rows"]} == {"pass"} and not compared["regressions"]


@pytest.mark.parametrize("change,said", [
    (lambda p: p.write_text("{not json"), "is not JSON"),
    (lambda p: p.write_text('{"schema": "resnet-edge.parity/2"}'), "is not a resnet-edge.bench/1 report"),
    (lambda p: p.write_text(json.dumps({"schema": "resnet-edge.bench/1", "results": [
        {"host_to_host": {"p50_ms": 1.0}}]})), "holds no latency samples"),
])
def test_a_baseline_that_is_not_a_bench_report_is_refused_before_the_work(change, said, digits_workdir,
                                                                          tmp_path, run_cli):
    path = tmp_path / "old.json"
    change(path)
    one_line_error(_bench(run_cli, digits_workdir, path), 2, said)


def test_a_baseline_from_other_hardware_is_refused_naming_it(measured, digits_workdir, tmp_path, run_cli):
    path = _baseline(measured, tmp_path, 1.0, cpu="Some Other CPU")
    one_line_error(_bench(run_cli, digits_workdir, path), 2,
                   "ran on other hardware (cpu 'Some Other CPU', here")


# ---- parity against a baseline ------------------------------------------------------------------

def _parity_baseline(report, tmp_path, top1_shift=0.0, **data):
    changed = json.loads(json.dumps(report))
    for row in changed["candidates"]:
        if row["status"] == "ran":
            row["accuracy"]["top1"] += top1_shift
    changed["data"].update(data)
    path = tmp_path / "main.json"
    path.write_text(json.dumps(changed))
    return path


def _parity(run_cli, workdir, baseline, *extra):
    return run_cli("parity", workdir, "--backends", "ort", "--precisions", "fp32,int8", "--limit", "128",
                   "--baseline", baseline, *extra)


def test_a_row_whose_accuracy_fell_against_main_fails(parity_main, calibrated_workdir, tmp_path, run_cli):
    # main was 2 points better on the same 128 images: this run's rows fell 2 points
    fell = _parity(run_cli, calibrated_workdir, _parity_baseline(parity_main, tmp_path, 0.02))
    one_line_error(fell, 1, "accuracy regression against the baseline: ort fp32 top-1 -2.00 pt (limit -0.5)")
    same = _parity(run_cli, calibrated_workdir, _parity_baseline(parity_main, tmp_path), "--json",
                   tmp_path / "p.json")
    assert same.exit_code == 0, same.output
    rows = json.loads((tmp_path / "p.json").read_text())["baseline"]["rows"]
    assert {(r["backend"], r["precision"], r["verdict"]) for r in rows} == {("ort", "fp32", "pass"),
                                                                          ("ort", "int8", "pass")}
    assert all(r["top1_change_pt"] == 0.0 for r in rows)


def test_the_reference_is_held_to_the_baselines_saved_outputs(parity_main, calibrated_workdir,
                                                             tmp_path, run_cli):
    from resnet_edge.parity.run import SAVED_LOGITS, reference_outputs, saved_logits
    saved = parity_main["reference"]["outputs"]
    assert len(saved["top1"]) == 128 and saved_logits(saved).shape == (SAVED_LOGITS, 10)
    same = _parity(run_cli, calibrated_workdir, _parity_baseline(parity_main, tmp_path), "--json",
                   tmp_path / "p.json")
    ref = json.loads((tmp_path / "p.json").read_text())["baseline"]["reference"]
    # one model, one set: the same classes, logits equal but for fp32 summation order
    assert ref["compared"] and ref["top1_same"] == 1.0 and ref["max_abs_logit_change"] < 1e-3, ref
    assert not ref["changed"] and "the same top-1 on 100.00% of 128 images" in same.stdout

    # main's reference answered otherwise on 3 images, its logits 0.5 away: said, not gated
    changed = json.loads(json.dumps(parity_main))
    top1 = list(saved["top1"])
    top1[:3] = [(c + 1) % 10 for c in top1[:3]]
    changed["reference"]["outputs"] = reference_outputs(top1, saved_logits(saved) + 0.5)
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    moved = _parity(run_cli, calibrated_workdir, tmp_path / "changed.json")
    assert moved.exit_code == 0, moved.output
    assert "the same top-1 on 97.66% of 128 images" in moved.stdout
    assert "the reference itself changed" in moved.stdout

    del changed["reference"]["outputs"]  # a report from before parity saved them
    (tmp_path / "old.json").write_text(json.dumps(changed))
    assert "saved no reference outputs" in _parity(run_cli, calibrated_workdir, tmp_path / "old.json").stdout
    changed["reference"]["outputs"] = {"top1": top1, "logits": {"images": 2, "classes": 10,
                                                                "float32_base64": "not base64!"}}
    (tmp_path / "bad.json").write_text(json.dumps(changed))
    one_line_error(_parity(run_cli, calibrated_workdir, tmp_path / "bad.json"), 2,
                   "baseline " + str(tmp_path / "bad.json") + " is not a well-formed report")
    import numpy as np
    nan = saved_logits(saved).copy()
    nan[0, 0] = np.nan  # a NaN compared as "within nan" and not changed
    changed["reference"]["outputs"] = reference_outputs(top1, nan)
    (tmp_path / "nan.json").write_text(json.dumps(changed))
    one_line_error(_parity(run_cli, calibrated_workdir, tmp_path / "nan.json"), 2,
                   "is not a well-formed report (ValueError: saved reference logits hold NaN or inf)")


def test_a_parity_baseline_on_other_data_is_refused(parity_main, calibrated_workdir, tmp_path, run_cli):
    other = _parity_baseline(parity_main, tmp_path, images=397)
    one_line_error(_parity(run_cli, calibrated_workdir, other), 2,
                   "evaluated other images ('digits:test', 397 images) than this run ('digits:test', "
                   "128): different sets")
    (tmp_path / "bench.json").write_text('{"schema": "resnet-edge.bench/1"}')
    one_line_error(_parity(run_cli, calibrated_workdir, tmp_path / "bench.json"), 2,
                   "is not a resnet-edge.parity/1 report (it is 'resnet-edge.bench/1'); give a `parity --json` report")


def test_a_parity_baseline_is_matched_by_the_images_not_their_path_and_before_any_work(
        parity_main, calibrated_workdir, tmp_path, run_cli, monkeypatch):
    """A byte-identical copy of the evaluation set in another CI workspace was "different sets";
    and that refusal, like the wrong-model one, came after the whole evaluation."""
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    first = tmp_path / "ws1" / "val"
    for i in range(40):
        (first / str(i % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(first / str(i % 10) / f"{i}.png")
    second = tmp_path / "ws2" / "val"
    shutil.copytree(first, second)
    args = ("parity", calibrated_workdir, "--backends", "ort", "--precisions", "fp32")
    main = tmp_path / "main.json"
    assert run_cli(*args, "--data", f"imagefolder:{first}", "--json", main).exit_code == 0
    copy = run_cli(*args, "--data", f"imagefolder:{second}", "--baseline", main)
    assert copy.exit_code == 0, copy.output  # the same images at another path: compared
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(second / "3" / "3.png")
    from resnet_edge.parity import run as parity_run
    monkeypatch.setattr(parity_run, "open_backend", lambda *a, **k: pytest.fail("the pass began"))
    one_line_error(run_cli(*args, "--data", f"imagefolder:{second}", "--baseline", main), 2,
                   "evaluated other images")
    other = json.loads(main.read_text())
    other["model"]["arch"] = "resnet50"
    main.write_text(json.dumps(other))
    one_line_error(run_cli(*args, "--data", f"imagefolder:{first}", "--baseline", main), 2,
                   "is of another model (arch 'resnet50'")


def test_a_jetson_records_its_release_and_power_mode(tmp_path, monkeypatch):
    from resnet_edge.runtime.latency import jetson_conditions
    assert jetson_conditions(tmp_path) is None  # not a Jetson
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "nvpmodel").write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    (stub / "nvpmodel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:/usr/bin:/bin")
    assert jetson_conditions(tmp_path) == {
        "l4t": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64",
        "power_mode": "NV Power Mode: MAXN", "clocks": None}  # no jetson_clocks here to ask


def test_a_baseline_from_another_power_mode_is_refused(measured, digits_workdir, tmp_path, run_cli):
    path = _baseline(measured, tmp_path, 1.0, jetson={"l4t": "# R36", "power_mode": "NV Power Mode: 15W"})
    one_line_error(_bench(run_cli, digits_workdir, path), 2,
                   "ran on other hardware (jetson {'l4t': '# R36', 'power_mode': 'NV Power Mode: 15W'}, here None)")


def test_a_jetson_baseline_with_other_clocks_is_refused_naming_them(measured, tmp_path):
    from resnet_edge.errors import BadInput
    from resnet_edge.bench import refuse_incomparable
    orin = {"l4t": "# R36", "power_mode": "NV Power Mode: MAXN", "clocks": "locked"}
    old = {"model": measured["model"], "machine": {**measured["machine"], "jetson": orin}}
    here = {**measured["machine"], "jetson": {**orin, "clocks": "not locked"}}
    with pytest.raises(BadInput, match=r"ran on other hardware \(jetson clocks 'locked', here 'not locked'\)"):
        refuse_incomparable(old, measured["model"], here, "main.json")
    refuse_incomparable(old, measured["model"], {**here, "jetson": orin}, "main.json")  # alike: no error


# ---- many runs on one page ----------------------------------------------------------------------

@pytest.fixture
def fleet(measured, parity_main, tmp_path):
    """Two devices' bench reports (the second with its own baseline verdicts) and a parity run."""
    jetson = json.loads(json.dumps(measured))
    jetson["machine"].update(cpu="ARMv8 Processor rev 1 (v8l)", gpu="Orin",
                             jetson={"l4t": "# R36", "power_mode": "NV Power Mode: MAXN"})
    jetson["baseline"] = {"rows": [{"backend": "ort", "precision": "fp32", "batch_size": 8,
                                    "verdict": "regression", "ratio": 1.4, "low": 1.3, "high": 1.5}]}
    jetson["results"][0]["power"] = {"source": "tegrastats", "samples": 12, "total_rail": None,
                                     "rails_mw": {"VDD_GPU_SOC": 2412.0, "VIN_SYS_5V0": 4673.7},
                                     "mj_per_image": {"VDD_GPU_SOC": 4.82, "VIN_SYS_5V0": 9.35}}
    parity = json.loads(json.dumps(parity_main))
    parity["baseline"] = {"rows": [{"backend": "ort", "precision": "int8", "verdict": "pass",
                                    "top1_change_pt": -0.25, "agreement_change_pt": 0.5}]}
    x86 = json.loads(json.dumps(measured))
    for report in (x86, parity):  # CPU runners, whatever this machine has
        report["machine"].update(gpu=None, driver=None)
    paths = [tmp_path / "runs" / name for name in ("x86", "orin", "parity")]
    for path, report in zip(paths, (x86, jetson, parity)):
        path.mkdir(parents=True)
        (path / "report.json").write_text(json.dumps(report))
    return [p / "report.json" for p in paths]


def test_runs_from_many_devices_merge_into_one_page(fleet, tmp_path, run_cli):
    out = tmp_path / "site" / "fleet.html"
    result = run_cli("report", *fleet, "--html", out, "--markdown", tmp_path / "fleet.md")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Orin, NV Power Mode: MAXN" in page and "href='../runs/orin/report.json'" in page
    assert page.count("<th><a href=") == 3
    assert "<td class='regression'>p50 " in page and "[regression x1.40]" in page  # its own verdict
    # energy per image, each rail named: AGX Orin has no whole-module rail to call a total
    assert "4.82 mJ/img VDD_GPU_SOC, 9.35 mJ/img VIN_SYS_5V0" in page
    differ = page[page.index("id='differences'"):]
    assert "<td>gpu</td><td>-</td><td>Orin</td><td>-</td>" in differ and "jetson.power_mode" in differ
    assert ">orin/report.json</a>" in page  # the runs' files share a name: their folders tell them apart
    assert "versions." not in differ  # the runs share their libraries
    assert re.search(r"top-1 \d+\.\d\d%, agreement \d+\.\d\d%", page)
    assert re.search(r"<td class='pass'>top-1 [^<]* \[pass -0\.25 pt\]</td>", page)  # top-1's change
    assert "<script" not in page
    markdown = (tmp_path / "fleet.md").read_text()
    assert markdown.count("| latency | ort fp32 |") == 2 and "Orin, NV Power Mode: MAXN" in markdown
    assert "## Where the runs differ" in markdown


@pytest.mark.parametrize("name", ["javascript:alert(1)", "https:evil.example", "data:text,x"])
def test_a_report_file_name_never_links_as_a_scheme(name, measured, tmp_path, run_cli):
    (tmp_path / name).write_text(json.dumps(measured))
    assert run_cli("report", tmp_path / name, "--html", tmp_path / "fleet.html").exit_code == 0
    hrefs = re.findall(r"href='([^']*)'", (tmp_path / "fleet.html").read_text())
    assert hrefs and all(":" not in href for href in hrefs), hrefs


def test_reports_say_what_int8_was_calibrated_on_and_what_files_were_left_out(parity_main, calibrated_workdir,
                                                                             tmp_path, run_cli):
    calibration = parity_main["calibration"]
    assert (calibration["data"], calibration["samples"], calibration["method"], calibration["recipe"]) == (
        "digits:train", 128, "minmax", "tensorrt")
    from PIL import Image
    import numpy as np
    for i in range(12):
        (tmp_path / "val" / str(i % 10)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / str(i % 10) / f"{i}.png")
    (tmp_path / "val" / "3" / "notes.txt").write_text("not an image")
    result = run_cli("parity", calibrated_workdir, "--backends", "ort", "--precisions", "int8",
                     "--data", f"imagefolder:{tmp_path / 'val'}", "--json", tmp_path / "p.json",
                     "--markdown", tmp_path / "p.md")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "p.json").read_text())["data"]
    assert data["skipped_count"] == 1 and data["skipped_files"] == [str(tmp_path / "val" / "3" / "notes.txt")]
    markdown = (tmp_path / "p.md").read_text()
    assert "int8 calibrated on digits:train (128 images, minmax, tensorrt recipe)" in markdown
    assert "1 files of" in markdown and "skipped as not images" in markdown


def test_report_names_the_model_files_that_differ_and_shows_max_abs(parity_main, tmp_path, run_cli):
    """Two runs whose model.int8.onnx differ read "the runs record the same machine and
    libraries", and max abs, the one figure that differs, was not shown."""
    other = json.loads(json.dumps(parity_main))
    other["artifacts"]["model.int8.onnx"] = "f" * 64
    for row in other["candidates"]:
        if row["status"] == "ran" and row["precision"] == "int8":
            row["metrics"]["max_abs"] = 9.5
    paths = []
    for name, report in (("a", parity_main), ("b", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "parity.json").write_text(json.dumps(report))
        paths.append(tmp_path / name / "parity.json")
    result = run_cli("report", *paths, "--json", tmp_path / "merged.json", "--html", tmp_path / "f.html")
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [d["what"] for d in merged["differences"]] == ["files.model.int8.onnx"]
    int8 = next(r for r in merged["rows"] if r["precision"] == "int8")
    assert "max abs 9.50e+00" in int8["cells"][1] and "max abs" in int8["cells"][0]
    assert "same machine" not in (tmp_path / "f.html").read_text()
    same = run_cli("report", paths[0], paths[0].parent.parent / "a" / "parity.json", "--html", tmp_path / "g.html")
    assert same.exit_code == 0, same.output
    assert "same machine, libraries and model files" in (tmp_path / "g.html").read_text()


def test_reports_of_another_model_are_not_merged(fleet, tmp_path, run_cli):
    other = json.loads(fleet[0].read_text())
    other["model"]["arch"] = "resnet50"
    (tmp_path / "r50.json").write_text(json.dumps(other))
    one_line_error(run_cli("report", fleet[0], tmp_path / "r50.json"), 2,
                   "r50.json is of another model (arch 'resnet50'")
    (tmp_path / "x.json").write_text("[1, 2]")
    one_line_error(run_cli("report", tmp_path / "x.json"), 2,
                   "is not a resnet-edge.parity/1 or resnet-edge.bench/1 or resnet-edge.verify/3 "
                   "report (it is 'list')")


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed "
                    "(make test-browser installs Debian's chromium package and runs these)")
def test_chromium_renders_the_fleet_page(fleet, tmp_path, run_cli):
    """Rendered, with the regression in red; the screenshot is README's (docs/fleet.png)."""
    from PIL import Image
    out, shot = tmp_path / "fleet.html", tmp_path / "fleet.png"
    assert run_cli("report", *fleet, "--html", out).exit_code == 0
    dom = subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1500,560", f"--screenshot={shot}", "--dump-dom", out.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"<table id=\"fleet\">", dom) and dom.count("<th><a href=") == 3
    assert re.search(r"<table id=\"differences\">", dom)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 150) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)  # #cf222e: the regression
    assert red.sum() > 50, "the regression cell is not drawn in red"


@pytest.mark.parametrize("damage", [
    lambda r: r["results"][0].__setitem__("host_to_host", "fast"),          # wrong type
    lambda r: r["results"][0]["host_to_host"].__setitem__("samples_ms", ["a", "b"]),
    lambda r: r["results"][0]["host_to_host"].__setitem__("samples_ms", [0.0, -1.0]),
    lambda r: r["results"][0]["host_to_host"].__setitem__("samples_ms", [1.0]),   # too few
    lambda r: r.__setitem__("machine", "a laptop"),
    lambda r: r["results"][0].pop("backend"),                               # truncated row
])
def test_a_damaged_bench_baseline_is_one_line_not_a_traceback(damage, measured, digits_workdir,
                                                              tmp_path, run_cli):
    report = json.loads(json.dumps(measured))
    damage(report)
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(report))
    one_line_error(_bench(run_cli, digits_workdir, path), 2, f"baseline {path} is not a well-formed report")


@pytest.mark.parametrize("damage,as_baseline", [
    (lambda r: r["candidates"][0]["metrics"].__setitem__("top1_agreement", "high"), True),
    (lambda r: r["candidates"][0].pop("backend"), True),
    (lambda r: r["candidates"][0].__setitem__("precision", 16), False),  # a baseline: no such row
    (lambda r: r.__setitem__("machine", None), False),                   # a baseline: not read
    (lambda r: r["machine"].__setitem__("versions", [1, 2]), False),     # the page's differences
    (lambda r: r["machine"].__setitem__("jetson", "Orin"), False),
])
def test_a_damaged_report_given_back_is_one_line_not_a_traceback(damage, as_baseline, parity_main,
                                                                 calibrated_workdir, tmp_path, run_cli):
    report = json.loads(json.dumps(parity_main))
    damage(report)
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(report))
    one_line_error(run_cli("report", path), 2, f"report {path} is not a well-formed report")
    if as_baseline:
        one_line_error(_parity(run_cli, calibrated_workdir, path), 2,
                       f"baseline {path} is not a well-formed report")


def test_a_bench_baseline_from_other_hardware_is_refused_before_the_bench(measured, digits_workdir,
                                                                          tmp_path, run_cli, monkeypatch):
    from resnet_edge import bench
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("the bench ran"))
    path = _baseline(measured, tmp_path, 1.0, cpu="Some Other CPU")
    one_line_error(_bench(run_cli, digits_workdir, path), 2, "ran on other hardware")
    one_line_error(_bench(run_cli, digits_workdir, _baseline(measured, tmp_path), "--iterations", "1"), 2,
                   "--baseline compares latency samples: give --iterations 2 or more")


class _Warming:
    """A backend whose runs get faster as it warms up (a CPU ramping its clocks, pools filling)
    from `slow_s` towards `fast_s` by `decay` a run, on a clock of its own, so the test holds on
    any machine, loaded or not."""

    separates_device_time = False

    def __init__(self, decay, slow_s=0.003, fast_s=0.001):
        self.now, self.runs, self.decay, self.slow_s, self.fast_s = 0.0, 0, decay, slow_s, fast_s

    def clock(self):
        return self.now

    def run(self, batch=None):
        self.now += self.fast_s + (self.slow_s - self.fast_s) * self.decay ** self.runs
        self.runs += 1


def test_the_warm_up_goes_on_until_the_runs_stop_getting_faster():
    """The backend a bench measured first read up to 1.5x slower than the same backend later
    (a subset bench against main's full one flagged "regression x1.51"): ten fixed warm-up runs
    were not enough for a machine still spinning up."""
    from resnet_edge.runtime import timing
    batch = np.zeros((1, 3, 8, 8), np.float32)
    fixed = _Warming(decay=0.9)  # what ten warm-up runs alone would have timed: 3 ms ramping down
    for _ in range(10):
        fixed.run()
    first = [fixed.run() or fixed.now for _ in range(20)]
    timed_after_ten = (first[10] - first[9]) * 1e3
    warming = _Warming(decay=0.9)
    result = timing.measure(warming, batch, iterations=20, warmup=10, clock=warming.clock)
    assert timed_after_ten > 1.2 and result["host_to_host"]["p50_ms"] < 1.08, (timed_after_ten, result["host_to_host"])
    steady = _Warming(decay=0.0)
    timing.measure(steady, batch, iterations=20, warmup=10, clock=steady.clock)
    assert steady.runs == 2 * timing.SETTLE_WINDOW + 20  # nothing to wait for: the least warm-up
    endless = _Warming(decay=0.98, slow_s=0.05, fast_s=0.0)  # 10 % faster every 5 runs: stopped at the cap
    made = timing.settle(endless.run, 10, endless.clock)
    assert timing.SETTLE_MAX_S < endless.now <= timing.SETTLE_MAX_S + 0.05 and made == endless.runs > 10


def test_a_bench_of_fewer_backends_does_not_say_the_model_files_differ(measured):
    from resnet_edge.bench import compare_to_baseline
    full = json.loads(json.dumps(measured))
    full["artifacts"] = {**full["artifacts"], "model.int8.onnx": "a" * 64}  # main benched int8 too
    compared = compare_to_baseline(measured, full, "main.json")
    assert not any("model files" in d for d in compared["differs"]), compared["differs"]
    changed = json.loads(json.dumps(measured))
    changed["artifacts"]["model.onnx"] = "b" * 64
    assert "model files (model.onnx)" in compare_to_baseline(measured, changed, "main.json")["differs"]


@pytest.mark.parametrize("iterations,per_iteration,budget,fitted,said", [
    (None, 0.001, 300.0, 100, None),  # fits: the default
    (None, 1.0, 300.0, 290, None),  # capped at 100 below
    (None, 5.0, 300.0, 50, "100 iterations a row would take about"),
    (None, 20.0, 300.0, None, "even at 10 iterations a row, past --budget"),
    (250, 20.0, 300.0, 250, None),  # asked for: run as asked
    (None, 5.0, None, 100, None),  # no budget
])
def test_a_bench_without_iterations_is_fitted_to_its_budget(iterations, per_iteration, budget, fitted, said):
    """The default bench of a ResNet-18 on a CPU runner was a 52-minute job, said after 63 s."""
    from resnet_edge.bench import _fitted
    from resnet_edge.errors import BadInput
    notes = []
    if fitted is None:
        with pytest.raises(BadInput, match=said):
            _fitted(iterations, 10, per_iteration, budget, notes.append)
        return
    got = _fitted(iterations, 10, per_iteration, budget, notes.append)
    assert got == min(fitted, 100) if iterations is None else got == fitted
    assert (said in notes[0]) if said else not notes


def test_a_bench_past_its_budget_is_refused_before_the_timed_runs(digits_workdir, run_cli, tmp_path):
    result = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                     "--batch-sizes", "1", "--budget", "0.001", "--json", tmp_path / "b.json")
    said = one_line_error(result, 2, "iterations a row, past --budget")
    assert "give --budget" in said and not (tmp_path / "b.json").exists()
    assert "note: bench: 1 measurement (1 x 1 batch sizes), each probed first" in result.stderr
