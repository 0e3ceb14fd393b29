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
    assert made.path == Path("artifacts/api-r20/api-r20-jetpack6.tar.gz") and made.path.exists()
    assert made.precisions == ["fp32", "fp16", "int8"]
    assert f"{made.path} {made.manifest_sha256}" in capsys.readouterr().out


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
