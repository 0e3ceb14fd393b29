"""README's Python API example, run as it is written."""

import re
from pathlib import Path

import pytest

from resnet_edge import api
from resnet_edge.errors import BadInput

README = Path(__file__).parent.parent / "README.md"


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    example = re.search(r"<!-- api-example -->\n```python\n(.*?)```", README.read_text(), re.S)[1]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md (api example)", "exec"), namespace)
    report, latency, made = namespace["report"], namespace["latency"], namespace["made"]
    ran = {(r["backend"], r["precision"]) for r in report["candidates"] if r["status"] == "ran"}
    assert {("ort", "fp32"), ("ort", "fp16"), ("ort", "int8")} <= ran
    assert report["data"]["images"] == 64 and "summary" in report
    assert {r["host_to_host"]["batch_size"] for r in latency["results"]} == {1, 8}
    assert made.path == Path("dist/api-r20-jetpack6.tar.gz") and made.path.exists()  # out is a folder
    assert made.precisions == ["fp32", "fp16", "int8"]
    assert f"{made.path} {made.manifest_sha256}" in capsys.readouterr().out
    checked = namespace["checked"]
    assert checked["passed"] and checked["golden_images"] == 64 and checked["exit_code"] == 0
    assert api.check(report) is report


def test_bad_input_raises_the_commands_one_line_message(tmp_path):
    with pytest.raises(BadInput, match="has no model.onnx; run `resnet-edge export"):
        api.parity(tmp_path / "nowhere", "digits:test")


@pytest.mark.parametrize("call,said", [
    (lambda w: api.bench(w, [("tpu", "fp64")]), "unknown backend 'tpu'; use torch, ort, trt"),
    (lambda w: api.bench(w, [("ort", "fp64")]), "unknown precision 'fp64'; use fp32"),
    (lambda w: api.bench(w, "ort"), "pairs are a list of (backend, precision)"),
    (lambda w: api.bench(w, ["ort"]), "'ort' is not a (backend, precision) pair"),
    (lambda w: api.bench(w, [("ort", "fp32")], iterations=0), "--iterations must be at least 1, --warmup at least 0"),
    (lambda w: api.bench(w, [("ort", "fp32")], warmup=-1), "--iterations must be at least 1, --warmup at least 0"),
    (lambda w: api.bench(w, [("ort", "fp32")], iterations=2.5), "iterations (--iterations) must be a whole number"),
    (lambda w: api.bench(w, [("ort", "fp32")], [1.5]), "batch_sizes (--batch-sizes) must be a list"),
    (lambda w: api.bench(w, [("ort", "fp32")], device="gpu7"), "device 'gpu7' is not one of auto, cpu, cuda"),
    (lambda w: api.parity(w, backends="ort"), "backends are a list of names"),
    (lambda w: api.parity(w, backends=["ort"], precisions=["fp64"]), "unknown precision 'fp64'"),
    (lambda w: api.parity(w, backends=["ort"], limit=0), "--limit must be at least 1, got 0"),
    (lambda w: api.parity(w, backends=["ort"], limit="10"), "limit (--limit) must be a whole number or None, got '10'"),
    (lambda w: api.parity(w, backends=["ort"], device="gpu7"), "device 'gpu7' is not one of auto, cpu, cuda"),
    (lambda w: api.parity(w, backends=["ort"], agreement="most"), "agreement 'most' is not one of raw, decisive"),
    (lambda w: api.parity(w, backends=["ort"], batch_size=True), "batch_size (--batch-size) must be a whole number or None, got 'True'"),
    (lambda w: api.parity(7), "workdir 7 is not a path"),
    (lambda w: api.bench(None, [("ort", "fp32")]), "workdir None is not a path"),
    # the 13 raw Python errors of round five
    (lambda w: api.check({}), "check judges a report from parity or bench"),
    (lambda w: api.check(None), "got NoneType"),
    (lambda w: api.check("x"), "got str 'x'"),
    (lambda w: api.check([]), "got list"),
    (lambda w: api.check({"schema": "resnet-edge.parity/1", "summary": {}}), "the resnet-edge.parity/1 report is incomplete"),
    (lambda w: api.verify(w, key=123), "key (--key) must be a path (str or Path) or None, got '123'"),
    (lambda w: api.verify(w, allow_unsigned=True, iterations="x"), "iterations (--iterations) must be a whole number or None"),
    (lambda w: api.train("resnet20", epochs="x"), "epochs (--epochs) must be a whole number or None, got 'x'"),
    (lambda w: api.train("resnet20", lr=float("nan")), "lr (--lr) must be a finite number, got 'nan'"),
    (lambda w: api.eval(w / "model.pt", data=42), "data (--data) must be a str or None, got '42'"),
    (lambda w: api.eval(w / "model.pt", batch_size=-1), "--batch-size must be at least 1, got -1"),
    (lambda w: api.bundle(w, out=w / "model.onnx" / "sub"), "is not writable (Not a directory)"),
    (lambda w: api.parity(w, data=42), "data (--data) must be a str or None, got '42'"),
    (lambda w: api.parity(w, thresholds={"int8": 0.99}), "thresholds['int8'] is a {gate: value} dict or a Thresholds"),
    (lambda w: api.parity(w, thresholds={"int8": {"min_cosine": 2}}), "[int8] min_cosine = 2 is outside -1..1"),
    (lambda w: api.parity(w, limits=10), "api.parity: got an unexpected keyword argument 'limits'"),
    (lambda w: api.bundle(w, golden="10"), "golden (--golden) must be a whole number, got '10'"),
    (lambda w: api.load_model(None), "source is a zoo name"),
    (lambda w: api.calibrate(w, "digits", samples="many"), "samples (--samples) must be a whole number"),
    (lambda w: api.debug(w, "fp16", images=2.5), "images (--images) must be a whole number"),
])
def test_wrong_types_and_ranges_raise_bad_input_with_the_commands_line(call, said, digits_workdir):
    with pytest.raises(BadInput) as raised:
        call(digits_workdir)
    assert said in str(raised.value) and "\n" not in str(raised.value)


def test_the_apis_defaults_give_the_commands_verdict(digits_workdir, run_cli, tmp_path):
    """`api.check(api.parity(...))` raised MissingBackend on every machine without TensorRT:
    the default backends counted as named, where the command with no --backends exits 0."""
    report = api.parity(digits_workdir, "digits:test", precisions=["fp32"], limit=16)
    result = run_cli("parity", digits_workdir, "--data", "digits:test", "--precisions", "fp32",
                     "--limit", "16")
    assert report["summary"]["explicit_backends_missing"] == []
    # the same verdict: 0 here; where TensorRT runs too, whatever its gates say, the same for both
    from resnet_edge.errors import GateFailed
    try:
        verdict = 0 if api.check(report) is report else None
    except GateFailed:
        verdict = 1
    assert result.exit_code == verdict, result.output


def test_one_gate_is_overridden_as_gate_does_and_printed_with_its_deciding_digits(digits_workdir):
    """thresholds={"int8": Thresholds(min_cosine=...)} was KeyError 'fp32' after the pass began;
    the failing gate printed `< 1.000000` for 0.9999999."""
    from resnet_edge.errors import GateFailed
    from resnet_edge.parity.gates import describe
    report = api.parity(digits_workdir, "digits:test", backends=["ort"], precisions=["fp32", "fp16"],
                        thresholds={"fp16": {"min_cosine": 0.99999999999}}, limit=16)
    fp16 = next(r for r in report["candidates"] if r["precision"] == "fp16")
    gates = {g["gate"]: g for g in fp16["gates"]}
    assert gates["cosine"]["threshold"] == 0.99999999999 and "top1_agreement_pct" in gates  # the rest kept
    with pytest.raises(GateFailed, match="cosine"):
        api.check(report)
    line = describe(gates["cosine"])
    value, threshold = re.search(r"cosine (\S+) < (\S+) ", line).groups()
    assert threshold == "0.99999999999" and float(value) < 0.99999999999, line
    assert describe({"gate": "cosine", "value": 0.99999989, "threshold": 0.9999999, "passed": False,
                     "status": "fail"}).startswith("cosine 0.99999989 < 0.9999999 ")
    replaced = api.parity(digits_workdir, "digits:test", backends=["ort"], precisions=["fp32", "fp16"],
                          thresholds={"fp16": api.Thresholds(min_cosine=0.9)}, limit=16)
    fp16 = next(r for r in replaced["candidates"] if r["precision"] == "fp16")
    assert {g["gate"] for g in fp16["gates"]} >= {"cosine"} and api.check(replaced)


def test_api_parity_and_bench_choose_onnx_runtimes_providers(digits_workdir):
    report = api.parity(digits_workdir, "digits:test", backends=["ort"], precisions=["fp32"],
                        ort_providers=["cpu"], limit=8)
    assert [r["backend"] for r in report["candidates"]] == ["ort-cpu"]
    latency = api.bench(digits_workdir, [("ort", "fp32")], [1], ort_providers=["cpu"], iterations=2, warmup=0)
    assert [r["backend"] for r in latency["results"]] == ["ort-cpu"]
    assert api.check(latency) is latency


def test_the_api_does_what_the_readme_says_of_it(digits_workdir, trained_digits, measured, tmp_path):
    import json
    import warnings
    from resnet_edge.errors import GateFailed, MissingBackend
    # an existing folder as out: the bundle goes in it, as --out; a file as out is refused
    (tmp_path / "dist").mkdir()
    made = api.bundle(digits_workdir, "jetpack6", tmp_path / "dist", data="digits:test", golden=40)
    assert made.path == tmp_path / "dist" / f"{digits_workdir.name}-jetpack6.tar.gz"
    (tmp_path / "file").write_text("")
    with pytest.raises(BadInput, match="is a file; give the folder the bundle goes in"):
        api.bundle(digits_workdir, "jetpack6", tmp_path / "file")
    # a failing gate: the report comes back, check raises the command's line
    strict = {p: t for p, t in api.load_thresholds().items()}
    import dataclasses
    strict["fp16"] = dataclasses.replace(strict["fp16"], max_abs=1e-12)
    report = api.parity(digits_workdir, "digits:test", backends=["ort"], precisions=["fp16"],
                        thresholds=strict, limit=32)
    assert report["summary"]["passed"] is False
    with pytest.raises(GateFailed, match="parity gates failed: ort fp16 max_abs"):
        api.check(report)
    named = api.parity(digits_workdir, "digits:test", backends=["ort", "trt"], precisions=["fp32"], limit=16)
    if named["summary"]["explicit_backends_missing"]:  # no TensorRT here
        with pytest.raises(MissingBackend, match="asked for but cannot run here: trt fp32"):
            api.check(named)
    # the commands the API lacked
    scores = api.eval(trained_digits.model_path, "digits:test")
    assert scores["images"] == 397 and 0.5 < scores["top1"] <= 1
    layers = api.debug(digits_workdir, "fp16", "digits:test", images=8)
    assert layers["layers"] and "first_exceeding" in layers
    (tmp_path / "b.json").write_text(json.dumps(measured))
    merged = api.report([tmp_path / "b.json"])
    assert merged["rows"] and merged["runs"][0]["report"] == str(tmp_path / "b.json")
    with pytest.raises(BadInput, match="paths is a list of report files"):
        api.report(str(tmp_path / "b.json"))
    trained = api.train("resnet20", "digits", tmp_path / "run", epochs=1, limit=64)
    assert trained.model_path.exists() and trained.card.metrics["val_top1"] >= 0
    # a library warning shows the caller's line, not the library's
    folder = tmp_path / "imgs"
    (folder / "0").mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (8, 8)).save(folder / "0" / "a.png")
    (folder / "0" / "broken.png").write_bytes(b"not a png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.eval(trained_digits.model_path, f"imagefolder:{folder}")
    assert caught and all(w.filename == __file__ for w in caught), [(w.filename, str(w.message)) for w in caught]
