"""The CI workflows in examples/: the CPU pull-request gate's steps run as written (on the
digits model: its MODEL, CALIB and VAL set to what this machine has), first without a baseline
as on the first run, then against the report it kept, as on every later pull request."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

ROOT = Path(__file__).parents[1]
EXAMPLES = ROOT / "examples"


def _workflow(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _steps_run_in_the_tests(workflow: dict) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"]
            if step.get("run", "").startswith("# runs in the tests")]


def test_every_example_workflow_is_yaml_with_steps():
    for path in EXAMPLES.glob("*.yml"):
        workflow = yaml.safe_load(path.read_text())
        assert workflow["jobs"] and all(job["steps"] for job in workflow["jobs"].values()), path


@pytest.mark.slow  # make test-examples, which .ci/run runs: ~40 s of processes that each load torch
def test_the_cpu_pull_request_gate_runs_as_written(tmp_path, trained_digits):
    workflow = _workflow("github-cpu-parity.yml")
    steps = _steps_run_in_the_tests(workflow)
    assert len(steps) == 2  # export and calibrate; the gate
    # the runner's checkout: the venv (this one) and the model in the repository
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "models").mkdir()
    shutil.copyfile(trained_digits.model_path, tmp_path / "models" / "model.pt")
    env = {**os.environ, **workflow["env"], "CALIB": "digits:train", "VAL": "digits:test",
           "LIMIT": "48", "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ['PATH']}"}

    def run(script):
        done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done
    export_and_calibrate, gate = steps
    run(export_and_calibrate)
    first = run(gate)  # the first run: no baseline yet
    cases = {(c.get("classname"), c.get("name")): c for c in
             ET.parse(tmp_path / "out" / "junit.xml").getroot().iter("testcase")}
    assert ("resnet-edge-parity.ort-int8", "top1_agreement_pct") in cases
    assert not any(name == "against_baseline" for _, name in cases)
    assert "<html" in (tmp_path / "out" / "parity.html").read_text()
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["data"]["images"] == 48 and "passed" in first.stdout
    # main kept that report: the next pull request is held to it, row by row
    (tmp_path / "baseline").mkdir()
    shutil.copyfile(tmp_path / "out" / "parity.json", tmp_path / "baseline" / "parity.json")
    run(gate)
    cases = [c for c in ET.parse(tmp_path / "out" / "junit.xml").getroot().iter("testcase")
             if c.get("name") == "against_baseline"]
    assert cases and all(c.find("failure") is None for c in cases)


@pytest.mark.parametrize("name", ["github-gpu-parity.yml", "github-cpu-parity.yml"])
def test_the_workflows_reinstall_nothing_that_did_not_change(name):
    """The GPU workflow reinstalled torch and TensorRT (6+ GB) and downloaded ImageNet weights
    on every run."""
    steps = [s for job in _workflow(name)["jobs"].values() for s in job["steps"]]
    cached = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache@")]
    assert ".venv" in cached
    assert any("hashFiles('pyproject.toml')" in s["with"]["key"] for s in steps
               if s.get("uses", "").startswith("actions/cache@") and s["with"]["path"] == ".venv")
    if "gpu" in name:
        assert "~/.cache/torch/hub/checkpoints" in cached
