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
