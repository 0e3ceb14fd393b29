import importlib.util
import json
import os
from pathlib import Path
import shutil
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cli_output import one_line_error, problem_lines
from resnet_edge.metrics import Accuracy, LogitComparison
from resnet_edge.parity.gates import DEFAULTS, load_thresholds
from resnet_edge.parity.run import run_parity
from resnet_edge.parity.report import md

TOP_KEYS = {"schema", "tool", "created", "workdir", "artifacts", "calibration", "model", "data", "agreement", "units",
            "machine", "thresholds", "reference", "candidates", "summary"}
ROW_KEYS = {"backend", "precision", "status", "reason", "device", "metrics", "accuracy",
            "latency", "gates", "error_histogram", "disagreements", "int8_path", "settings"}


def test_streaming_metrics_equal_whole_set_numbers():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10))
    cand = ref + rng.normal(0, 0.3, ref.shape)
    labels = rng.integers(0, 10, 50)
    cmp, acc = LogitComparison(), Accuracy()
    for lo in range(0, 50, 16):
        cmp.update(ref[lo:lo + 16], cand[lo:lo + 16])
        acc.update(cand[lo:lo + 16], labels[lo:lo + 16])
    assert cmp.max_abs == pytest.approx(np.abs(cand - ref).max())
    assert cmp.mean_abs == pytest.approx(np.abs(cand - ref).mean())
    assert cmp.top1_agreement == pytest.approx((cand.argmax(1) == ref.argmax(1)).mean())
    cos = (ref * cand).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(cand, axis=1)
    assert cmp.cosine == pytest.approx(cos.mean())
    assert acc.top1 == pytest.approx((cand.argmax(1) == labels).mean())
    top5 = np.argsort(-cand, 1)[:, :5]
    assert acc.top5 == pytest.approx((top5 == labels[:, None]).any(1).mean())


def test_cpu_parity_runs_every_cpu_backend_and_reports_skips(digits_workdir, run_cli, tmp_path):
    out = tmp_path / "reports"
    result = run_cli("parity", digits_workdir, "--data", "digits:test",
                     "--json", out / "p.json", "--markdown", out / "p.md", "--junit", out / "j.xml")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "p.json").read_text())
    assert set(report) == TOP_KEYS and report["schema"] == "resnet-edge.parity/1"
    # shares are fractions, gates in their own unit, and the report says which is which
    fp32 = next(r for r in report["candidates"] if (r["backend"], r["precision"]) == ("ort", "fp32"))
    gate = next(g for g in fp32["gates"] if g["gate"] == "top1_agreement_pct")
    assert gate["value"] == pytest.approx(fp32["metrics"]["top1_agreement"] * 100)
    assert "fractions" in report["units"]["metrics"] and "_pct percent" in report["units"]["gates"]
    rows = {(r["backend"], r["precision"]): r for r in report["candidates"]}
    assert all(set(r) == ROW_KEYS for r in rows.values())
    ran = {k for k, r in rows.items() if r["status"] == "ran"}
    assert ran == {("ort", "fp32"), ("ort", "fp16")}
    # torch fp16 on a CPU only when named: no fast kernels there, and the skip says so
    assert "runs on a GPU unless asked for" in rows[("torch", "fp16")]["reason"]
    assert rows[("ort", "fp32")]["metrics"]["max_abs"] < 1e-3
    assert rows[("ort", "fp32")]["accuracy"]["top1"] == pytest.approx(report["reference"]["accuracy"]["top1"])
    assert report["data"]["images"] == 397 and report["summary"]["passed"]
    skipped = {k: r["reason"] for k, r in rows.items() if r["status"] == "skipped"}
    assert "model.int8.onnx not found" in skipped[("ort", "int8")]
    assert all("TensorRT" in skipped[("trt", p)] or "engine" in skipped[("trt", p)]
               for p in ("fp32", "fp16", "int8"))
    # every format names the skipped backends and why
    markdown = (out / "p.md").read_text()
    junit = ET.parse(out / "j.xml").getroot()
    junit_skips = {c.get("classname"): c.find("skipped").get("message")
                   for c in junit.iter("testcase") if c.find("skipped") is not None}
    for (backend, precision), reason in skipped.items():
        assert f"{backend} {precision} | | | | | | | | skipped: {md(reason)}" in markdown  # as text, escaped
        assert junit_skips[f"resnet_edge.parity.{backend}.{precision}"] == reason
        assert f"skipped {backend} {precision}" in result.stdout
    assert (out / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert int(junit.find("testsuite").get("failures")) == 0


def _perturb_last_layer(workdir, dst):
    shutil.copytree(workdir, dst)
    model = onnx.load(str(dst / "model.onnx"))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    bias = next(i for i in model.graph.initializer if i.name == gemm.input[2])
    values = numpy_helper.to_array(bias).copy()
    values[3] += 25.0  # class 3 now wins almost everywhere
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(dst / "model.onnx"))


def test_a_hand_edited_model_is_refused_not_compared(digits_workdir, run_cli, tmp_path):
    bad = tmp_path / "bad"
    _perturb_last_layer(digits_workdir, bad)
    result = run_cli("parity", bad, "--backends", "ort", "--precisions", "fp32")
    assert result.exit_code == 2
    assert "model.onnx changed after resnet-edge wrote it" in result.stderr
    assert "resnet-edge export" in result.stderr and len(problem_lines(result.stderr)) == 1


def test_gate_really_fails_and_says_measured_vs_threshold(digits_workdir, run_cli, tmp_path):
    args = ("parity", digits_workdir, "--backends", "ort", "--precisions", "fp32")
    result = run_cli(*args, "--gate", "fp32.max_abs=1e-9",
                     "--junit", tmp_path / "j.xml", "--json", tmp_path / "p.json")
    assert result.exit_code == 1
    assert "parity gates failed: ort fp32 max_abs" in result.stderr
    failures = [c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")
                if c.find("failure") is not None]
    assert {c.get("name") for c in failures} == {"max_abs"}
    report = json.loads((tmp_path / "p.json").read_text())
    assert not report["summary"]["passed"]
    # and passes once the gate is back where it was
    toml = tmp_path / "loose.toml"
    toml.write_text("[fp32]\nmax_abs = 1e-3\n")
    assert run_cli(*args, "--thresholds", toml).exit_code == 0


def test_torch_fp16_runs_on_a_cpu_when_named(digits_workdir, calibrated_workdir, run_cli):
    result = run_cli("parity", digits_workdir, "--backends", "torch", "--precisions", "fp16",
                     "--limit", "64")
    assert result.exit_code == 0, result.output
    assert "torch fp16 (cpu)" in result.stdout and "skipped" not in result.stdout
    backends = run_cli("parity", calibrated_workdir, "--backends", "torch,ort", "--limit", "64")
    assert backends.exit_code == 0  # the default skip is not a backend asked for and missing
    assert "skipped torch fp16: torch fp16 runs on a GPU unless asked for" in backends.stdout


def test_explicitly_asked_backend_that_cannot_run_exits_3(digits_workdir, run_cli):
    result = run_cli("parity", digits_workdir, "--backends", "ort", "--precisions", "int8")
    assert result.exit_code == 3
    assert "ort int8 (model.int8.onnx not found" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_narrowing_precisions_does_not_make_a_backend_mandatory(digits_workdir, tmp_path, run_cli):
    """`--precisions fp32` on a CPU machine exited 3 for trt fp32, a backend nobody named; and for a
    bare ONNX file `--precisions fp32,fp16` demanded torch rows that can never exist."""
    result = run_cli("parity", digits_workdir, "--precisions", "fp32", "--limit", "32", "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    rows = {(r["backend"], r["precision"]): r for r in json.loads((tmp_path / "p.json").read_text())["candidates"]}
    assert rows[("ort", "fp32")]["status"] == "ran" and rows[("trt", "fp32")]["status"] == "skipped"
    assert "TensorRT is not installed" in rows[("trt", "fp32")]["reason"]
    import shutil
    shutil.copyfile(digits_workdir / "model.onnx", tmp_path / "bare.onnx")
    bare = run_cli("parity", tmp_path / "bare.onnx", "--precisions", "fp32,fp16", "--limit", "32")
    assert bare.exit_code == 0, bare.output
    named = run_cli("parity", digits_workdir, "--backends", "ort,trt", "--precisions", "fp32", "--limit", "32")
    one_line_error(named, 3, "asked for but cannot run here: trt fp32 (TensorRT is not installed")
    bench = run_cli("bench", digits_workdir, "--precisions", "fp32", "--iterations", "3", "--batch-sizes", "1")
    assert bench.exit_code == 0, bench.output


def test_a_cpu_bench_says_its_latency_is_the_cpus_and_why_int8_can_be_slower(calibrated_workdir, run_cli):
    result = run_cli("bench", calibrated_workdir, "--backends", "ort", "--precisions", "fp32,int8",
                     "--batch-sizes", "8", "--iterations", "5", "--json", "-")
    assert result.exit_code == 0, result.output
    assert "this CPU's latency, not a GPU's or a Jetson's" in result.stderr  # --json -: tables on stderr
    rows = {r["precision"]: r["host_to_host"]["p50_ms"] for r in json.loads(result.stdout)["results"]}
    said = "int8 ran slower than fp32 here" in result.stderr
    assert said == (rows["int8"] > rows["fp32"]), (rows, result.stderr)  # said exactly when it is so
    if said:
        assert "says nothing of TensorRT's int8 on a GPU or Jetson" in result.stderr


def test_unlabelled_data_says_accuracy_not_measured(digits_workdir):
    report = run_parity(digits_workdir, "random:20", backends=["ort"], precisions=["fp16"],
                        thresholds=load_thresholds())
    assert report["data"]["accuracy_note"] == "no labels: accuracy was not measured"
    row = report["candidates"][0]
    assert row["accuracy"] is None
    drop = next(g for g in row["gates"] if g["gate"] == "accuracy_drop_pt")
    assert drop["status"] == "not measured" and report["summary"]["passed"]


def test_thresholds_layering_and_errors(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text("[int8]\nmax_accuracy_drop_pt = 0.5\n")
    table = load_thresholds(toml, {"fp16": {"min_top1_agreement_pct": 90}})
    assert table["int8"].max_accuracy_drop_pt == 0.5
    assert table["int8"].min_relative_accuracy_pct == DEFAULTS["int8"].min_relative_accuracy_pct
    assert table["fp16"].min_top1_agreement_pct == 90
    toml.write_text("[int8]\nmax_drop = 0.5\n")
    from resnet_edge.errors import BadInput
    with pytest.raises(BadInput, match="unknown key 'max_drop'"):
        load_thresholds(toml)


def test_a_percentage_below_one_is_taken_when_written_as_one(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('[int8]\nmin_relative_accuracy_pct = "0.5%"\n[fp16]\nmin_top1_agreement_pct = 0.9\n')
    from resnet_edge.errors import BadInput
    with pytest.raises(BadInput, match=r"\[fp16\] min_top1_agreement_pct = 0.9 looks like a fraction"):
        load_thresholds(toml)
    toml.write_text('[int8]\nmin_relative_accuracy_pct = "0.5%"\n')
    assert load_thresholds(toml)["int8"].min_relative_accuracy_pct == 0.5
    assert load_thresholds(None, {"int8": {"min_top1_agreement_pct": "0.95%"}})["int8"].min_top1_agreement_pct == 0.95


@pytest.mark.parametrize("args,message", [
    (["parity", "{nowhere}"], "has no model.onnx; run `resnet-edge export"),
    (["parity", "{work}", "--backends", "tflite"], "unknown backend 'tflite'"),
    (["parity", "{work}", "--gate", "fp16=3"], "should look like fp16.max_accuracy_drop_pt=0.2"),
    (["parity", "{work}", "--limit", "0"], "--limit must be at least 1"),
    # a fraction where a percentage goes would all but switch the gate off
    (["parity", "{work}", "--gate", "int8.min_top1_agreement_pct=0.95"],
     "--gate: [int8] min_top1_agreement_pct = 0.95 looks like a fraction, but _pct gates are "
     "percentages (95 means 95 %); write 95, or \"0.95%\" if 0.95 % is meant"),
    (["bench", "{work}", "--batch-sizes", "a,b"], "--batch-sizes takes whole numbers"),
])
def test_parity_bad_usage(args, message, run_cli, digits_workdir, tmp_path):
    args = [a.format(nowhere=tmp_path / "empty", work=digits_workdir) for a in args]
    result = run_cli(*args)
    assert result.exit_code == 2 and message in result.stderr


def test_bench_reports_latency_statistics(digits_workdir, run_cli, tmp_path):
    result = run_cli("bench", digits_workdir, "--batch-sizes", "1,4", "--iterations", "5",
                     "--warmup", "1", "--backends", "torch,ort", "--precisions", "fp32",
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "b.json").read_text())
    rows = {(r["backend"], r["host_to_host"]["batch_size"]): r for r in bench["results"]}
    assert set(rows) == {("torch", 1), ("torch", 4), ("ort", 1), ("ort", 4)}
    stats = rows[("ort", 4)]["host_to_host"]
    assert stats["iterations"] == 5
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert stats["images_per_s"] == pytest.approx(4e3 / stats["p50_ms"])
    assert stats["images_per_s_mean"] == pytest.approx(4e3 / stats["mean_ms"])
    assert stats["images_per_s_from"] == "p50"
    assert rows[("ort", 4)]["device_compute"] is None  # CPU: no separate device time
    assert bench["machine"]["cores"] >= 1 and "onnxruntime" in bench["machine"]["versions"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_pytest_plugin_gives_one_test_per_gate(pytester, digits_workdir):
    args = (f"--parity-workdir={digits_workdir}",  # the pytest11 entry point loads the plugin
            "--parity-backends=ort,trt", "--parity-precisions=fp32,fp16", "--parity-limit=128")
    # known from the options and thresholds alone: collecting opens nothing, so a work
    # directory that is not there yet still lists (running would say it is missing)
    listed = pytester.runpytest_inprocess("--parity-workdir=not-made-yet", *args[1:],
                                           "--collect-only", "-q")
    listed.stdout.fnmatch_lines(["resnet-edge-parity::ort-fp32::finite_logits",
                                 "resnet-edge-parity::ort-fp16::accuracy_drop_pt",
                                 "resnet-edge-parity::trt-fp16::top1_agreement_pct", "12 tests collected*"])

    result = pytester.runpytest_inprocess(*args, "-v", "--junitxml=junit.xml")
    # fp32: finite_logits, top1_agreement_pct, max_abs; fp16: finite_logits,
    # top1_agreement_pct, accuracy_drop_pt; TensorRT is named but absent here: its 6 fail with
    # the reason, as the command exits 3
    result.assert_outcomes(passed=6, failed=6)
    result.stdout.fnmatch_lines(["*collected 12 items", "*ort-fp32::max_abs PASSED*",
                                 "*trt-fp16::accuracy_drop_pt FAILED*"])
    cases = list(ET.parse(pytester.path / "junit.xml").getroot().iter("testcase"))
    names = {(c.get("classname"), c.get("name")) for c in cases}
    assert all("TensorRT is not installed" in c.find("failure").get("message")
               for c in cases if c.get("classname").startswith("resnet-edge-parity.trt"))
    assert ("resnet-edge-parity.ort-fp16", "accuracy_drop_pt") in names and len(names) == 12

    one = pytester.runpytest_inprocess(*args, "-k", "ort-fp16 and accuracy_drop_pt", "-q")
    one.assert_outcomes(passed=1, deselected=11)
    bad = pytester.runpytest_inprocess(f"--parity-workdir={digits_workdir}", "--parity-backends=tvm")
    bad.stdout.fnmatch_lines(["*unknown backend 'tvm'*"])
    assert "Traceback" not in bad.stdout.str()

@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_the_plugin_fails_a_backend_named_that_cannot_run_and_writes_the_reports(pytester, digits_workdir):
    """--parity-backends ort,trt went green without TensorRT (8 passed, 8 skipped) where the
    command exits 3; its skip texts named the command's flags; it wrote no report."""
    base = (f"--parity-workdir={digits_workdir}", "--parity-precisions=fp32", "--parity-limit=64")
    named = pytester.runpytest_inprocess(*base, "--parity-backends=ort,trt", "-q",
                                         "--parity-json=out/parity.json", "--parity-html=out/parity.html")
    named.assert_outcomes(passed=3, failed=3)
    named.stdout.fnmatch_lines(["*trt fp32 was asked for (--parity-backends) but cannot run here: TensorRT is not installed*"])
    report = json.loads((pytester.path / "out" / "parity.json").read_text())
    assert report["schema"] == "resnet-edge.parity/1" and {r["backend"] for r in report["candidates"]} == {"ort", "trt"}
    assert "<html" in (pytester.path / "out" / "parity.html").read_text()
    # not named: the default set, where TensorRT's tests skip with the reason, in the plugin's words
    quiet = pytester.runpytest_inprocess(*base, "--parity-precisions=fp16", "-rs", "-k", "torch")
    quiet.assert_outcomes(skipped=3)
    quiet.stdout.fnmatch_lines(["*ask with --parity-backends torch --parity-precisions fp16*"])
    assert "--backends torch" not in quiet.stdout.str()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_pytest_plugin_holds_each_row_to_a_baseline(pytester, digits_workdir, run_cli, tmp_path):
    main = tmp_path / "main.json"
    assert run_cli("parity", digits_workdir, "--backends", "ort", "--precisions", "fp32,fp16",
                   "--limit", "128", "--json", main).exit_code == 0
    report = json.loads(main.read_text())
    fp16 = next(r for r in report["candidates"] if r["precision"] == "fp16")
    fp16["accuracy"]["top1"] += 0.02  # main's fp16 was 2 points better on these images
    main.write_text(json.dumps(report))
    args = (f"--parity-workdir={digits_workdir}", "--parity-backends=ort,trt",
            "--parity-precisions=fp32,fp16", "--parity-limit=128", f"--parity-baseline={main}")
    result = pytester.runpytest_inprocess(*args, "-k", "against_baseline", "-v")
    # ort fp32 as main; ort fp16 2 points under it; TensorRT, named, did not run here
    result.assert_outcomes(passed=1, failed=3, deselected=12)
    result.stdout.fnmatch_lines(["*ort-fp32::against_baseline PASSED*",
                                 "*ort fp16: top-1 -2.00 pt against the baseline (limit -0.5 pt)*"])
    (tmp_path / "bad.json").write_text("{")
    bad = pytester.runpytest_inprocess(*args[:-1], f"--parity-baseline={tmp_path / 'bad.json'}")
    bad.stdout.fnmatch_lines(["*bad.json is not JSON*"])
    assert "Traceback" not in bad.stdout.str()
    report["data"]["images"] = 397  # main evaluated the whole set: nothing to compare row by row
    (tmp_path / "other.json").write_text(json.dumps(report))
    other = pytester.runpytest_inprocess(*args[:-1], f"--parity-baseline={tmp_path / 'other.json'}",
                                         "-k", "ort-fp32 and against_baseline")
    other.assert_outcomes(failed=1, deselected=15)
    other.stdout.fnmatch_lines(["error: baseline *other.json evaluated other images ('digits:test', 397 images)*"])
    assert "Traceback" not in other.stdout.str() and "def runtest" not in other.stdout.str()


def test_a_precision_that_cannot_run_is_said_before_the_reference_pass(digits_workdir, tmp_path, run_cli):
    """int8 before calibrating ran the whole reference pass, printed an empty table, then exited 3."""
    result = run_cli("parity", digits_workdir, "--precisions", "int8", "--json", tmp_path / "p.json")
    one_line_error(result, 3, "nothing asked for can run, so nothing was compared: ort int8 "
                              "(model.int8.onnx not found (made by calibrate))")
    assert "parity:" not in result.stderr and not result.stdout.strip()  # no pass, no table
    assert not (tmp_path / "p.json").exists()


def test_a_work_dirs_model_onnx_stands_for_its_work_dir(digits_workdir, tmp_path, run_cli):
    """`parity model.onnx` answered "model.onnx has no model.onnx"."""
    result = run_cli("parity", digits_workdir / "model.onnx", "--backends", "ort", "--precisions",
                     "fp32", "--limit", "16")
    assert result.exit_code == 0, result.output


def test_a_bare_onnx_file_is_compared_with_its_own_fp32_run(digits_workdir, tmp_path, run_cli):
    """What a Polygraphy user has: one ONNX file, no work dir. Its card and batch profile come
    from its metadata, ONNX Runtime's fp32 run of it is the reference (no PyTorch model came
    with it), and nothing is left behind."""
    import shutil
    import tempfile
    import onnx
    shutil.copyfile(digits_workdir / "model.onnx", tmp_path / "resnet20.onnx")
    before = set(Path(tempfile.gettempdir()).glob("resnet-edge-onnx-*"))
    result = run_cli("parity", tmp_path / "resnet20.onnx", "--limit", "32", "--json", tmp_path / "p.json")
    report = json.loads((tmp_path / "p.json").read_text())
    assert (report["reference"]["backend"], report["reference"]["precision"]) == ("ort", "fp32")
    rows = {(r["backend"], r["precision"]): r for r in report["candidates"]}
    assert rows[("ort", "fp16")]["status"] == "ran" and ("ort", "fp32") not in rows
    assert rows[("torch", "fp16")]["reason"] == f"{tmp_path / 'resnet20.onnx'} is a bare ONNX file: no PyTorch model came with it"
    assert result.exit_code == 0, result.output
    bench = run_cli("bench", tmp_path / "resnet20.onnx", "--iterations", "3", "--batch-sizes", "1")
    assert bench.exit_code == 0 and "ort fp32 (CPU)" in bench.stdout, bench.output
    assert set(Path(tempfile.gettempdir()).glob("resnet-edge-onnx-*")) == before
    one_line_error(run_cli("calibrate", tmp_path / "resnet20.onnx"), 2,
                   "is an ONNX file outside a work directory, and calibrate writes into one")
    bare = onnx.load(str(tmp_path / "resnet20.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "foreign.onnx"))
    one_line_error(run_cli("debug", tmp_path / "foreign.onnx"), 2,
                   "carries no resnet-edge model card (preprocessing, classes) in its metadata")


def _with_metadata(source, out, key, change):
    import onnx
    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        if prop.key == key:
            data = json.loads(prop.value)
            change(data)
            prop.value = json.dumps(data)
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("key,change,said", [
    ("resnet_edge.export", lambda d: d.update(opt_batch=2.5), "batch profile in its metadata is unusable "
                                                             "(--opt-batch 2.5 is not a whole number)"),
    ("resnet_edge.export", lambda d: d.update(max_batch="32"), "--max-batch '32' is not a whole number"),
    ("resnet_edge.card", lambda d: d.update(num_classes=1000, class_names=None),
     "metadata says 1000 classes, but its graph outputs 10"),
    (None, None, "is not a readable ONNX file"),
])
def test_a_refused_bare_onnx_file_leaves_no_scratch_and_its_metadata_is_held_to_its_graph(
        key, change, said, digits_workdir, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read afresh
    bare = tmp_path / "bare.onnx"
    if key is None:
        bare.write_bytes(b"not a protobuf")
    else:
        _with_metadata(digits_workdir / "model.onnx", bare, key, change)
    one_line_error(run_cli("parity", bare, "--backends", "ort", "--limit", "8"), 2, said)
    assert not list((tmp_path / "tmp").glob("resnet-edge-onnx-*"))


def test_cpu_latency_says_it_is_not_device_latency(digits_workdir, run_cli):
    """On a CPU int8 can look twice as slow as fp32; the table says whose latency it is."""
    result = run_cli("parity", digits_workdir, "--backends", "ort", "--precisions", "fp32,int8",
                     "--limit", "16")
    assert "ms/batch: this CPU, not device latency" in result.stdout, result.output


def test_the_int8_note_names_each_cpu_row_slower_than_its_fp32():
    from resnet_edge.cli.measure import _int8_slower_on_cpu

    def row(precision, ms, device="ort {} (CPU)", batch=8):
        return {"backend": "ort", "precision": precision, "device": device.format(precision),
                "host_to_host": {"batch_size": batch, "p50_ms": ms}}
    assert _int8_slower_on_cpu([row("fp32", 1.2), row("int8", 3.1)]) == "ort int8 batch 8: 3.10 vs 1.20 ms"
    assert _int8_slower_on_cpu([row("fp32", 1.2), row("int8", 0.9)]) == ""
    assert _int8_slower_on_cpu([row("fp32", 1.2, "ort {} (CUDA)"), row("int8", 3.1, "ort {} (CUDA)")]) == ""


def test_the_backends_a_caller_names_are_the_ones_that_must_run():
    """One rule for the command line and the plugin: --ort-providers alone names ort's rows only,
    not the default set's torch and trt (the plugin failed TensorRT's tests for it)."""
    from resnet_edge.parity.run import named_backends
    assert named_backends(None, None) == []
    assert named_backends(None, ["cpu"]) == ["ort-cpu"]
    assert named_backends(["torch", "ort"], ["cpu", "cuda"]) == ["torch", "ort-cpu", "ort-cuda"]
    assert named_backends(["ort", "trt"], None) == ["ort", "trt"]


@pytest.mark.parametrize("given,said", [
    (lambda w, base: ["--parity-json=-"], "would write a file named '-'"),
    (lambda w, base: [f"--parity-baseline={base}", f"--parity-json={base}"], "which this command reads"),
    (lambda w, base: [f"--parity-json={w / 'model.onnx'}"], "a file resnet-edge keeps in"),
    (lambda w, base: ["--parity-json=same.out", "--parity-html=same.out"], "both name same.out"),
])
def test_the_plugins_reports_are_checked_before_the_session(given, said, pytester, digits_workdir,
                                                            parity_main, tmp_path):
    """The plugin checked none of this: the baseline or the model became the report, the JSON
    was lost under the HTML, and `-` became a file named '-'."""
    base = tmp_path / "main.json"
    base.write_text(json.dumps(parity_main))
    before = {p: p.read_bytes() for p in (base, digits_workdir / "model.onnx")}
    result = pytester.runpytest_inprocess(f"--parity-workdir={digits_workdir}", "--parity-backends=ort",
                                          "--parity-precisions=fp32", "--parity-limit=16",
                                          *given(digits_workdir, base))
    result.stdout.fnmatch_lines([f"*{said}*"])
    assert result.ret != 0 and "Traceback" not in result.stdout.str()
    assert not (pytester.path / "-").exists()
    assert all(p.read_bytes() == data for p, data in before.items())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_plugin_report_refused_at_the_end_is_a_line_not_a_traceback(pytester, digits_workdir):
    """A full device (or a pipe nobody reads) was a traceback from pytest_sessionfinish after
    green tests; the pipe is now refused before the session, the full device said at the end."""
    args = (f"--parity-workdir={digits_workdir}", "--parity-backends=ort", "--parity-precisions=fp32",
            "--parity-limit=16")
    result = pytester.runpytest_inprocess(*args, "--parity-json=/dev/full")
    result.stdout.fnmatch_lines(["error: --parity-json /dev/full was not written: *No space left*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED and "Traceback" not in result.stdout.str()
    os.mkfifo(pytester.path / "fifo")
    unread = pytester.runpytest_inprocess(*args, f"--parity-json={pytester.path / 'fifo'}")
    unread.stdout.fnmatch_lines(["*fifo is a pipe that nothing reads; start its reader first*"])
    assert unread.ret != 0 and "passed" not in unread.stdout.str()


def test_the_plugins_data_warnings_are_said_in_its_summary(pytester, digits_workdir):
    """A data warning from the pass pointed at the library's line (resnet_edge/data.py:302)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:40], digits.target[:40])):
        (pytester.path / "val" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 16).astype("uint8")).convert("RGB").save(pytester.path / "val" / str(label) / f"{i}.png")
    (pytester.path / "val" / "0" / "notes.txt").write_text("not an image")
    result = pytester.runpytest_inprocess(f"--parity-workdir={digits_workdir}", "--parity-backends=ort",
                                          "--parity-precisions=fp32", f"--parity-data=imagefolder:{pytester.path / 'val'}")
    result.stdout.fnmatch_lines(["*resnet-edge parity*", "warning: *1 file skipped as not images*"])
    assert "resnet_edge/data.py" not in result.stdout.str()
