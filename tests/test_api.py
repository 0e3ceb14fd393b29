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
    (lambda w: api.bench(w, [("ort", "fp32")], iterations=2.5), "--iterations must be at least 1"),
    (lambda w: api.bench(w, [("ort", "fp32")], [1.5]), "--batch-sizes 1.5 is not a whole number"),
    (lambda w: api.bench(w, [("ort", "fp32")], device="gpu7"), "device 'gpu7' is not one of auto, cpu, cuda"),
    (lambda w: api.parity(w, backends="ort"), "backends are a list of names"),
    (lambda w: api.parity(w, backends=["ort"], precisions=["fp64"]), "unknown precision 'fp64'"),
    (lambda w: api.parity(w, backends=["ort"], limit=0), "--limit must be at least 1, got 0"),
    (lambda w: api.parity(w, backends=["ort"], limit="10"), "--limit must be at least 1, got '10'"),
    (lambda w: api.parity(w, backends=["ort"], device="gpu7"), "device 'gpu7' is not one of auto, cpu, cuda"),
    (lambda w: api.parity(w, backends=["ort"], agreement="most"), "agreement 'most' is not one of raw, decisive"),
    (lambda w: api.parity(w, backends=["ort"], batch_size=True), "--batch-size True is not a whole number"),
    (lambda w: api.parity(7), "workdir 7 is not a path"),
    (lambda w: api.bench(None, [("ort", "fp32")]), "workdir None is not a path"),
])
def test_wrong_types_and_ranges_raise_bad_input_with_the_commands_line(call, said, digits_workdir):
    with pytest.raises(BadInput) as raised:
        call(digits_workdir)
    assert said in str(raised.value)


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
