pytest_plugins = ["pytester"]

import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from resnet_edge.cli import cli
from resnet_edge.runtime.gpu import DEVICE_ENV


def pytest_configure(config):
    # tests of CPU behaviour run on the CPU whatever the machine has: `auto` resolves to this
    # (runtime.gpu.resolve_device) in the process and in every subprocess a test starts;
    # gpu-marked tests set their own device (the on_gpu fixture below)
    os.environ[DEVICE_ENV] = "cpu"
    # a device writes bytecode, and so does every subprocess a test starts (verify.py,
    # build_engine.sh): the machines the tests run on set PYTHONDONTWRITEBYTECODE, which hid
    # lib/__pycache__ appearing inside every bundle run in place
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    # pytest -n N on a many-core machine: each worker takes its share of the cores (torch here,
    # ONNX Runtime through runtime.ort.default_threads, subprocesses through the variable),
    # not all of them each: N x cores threads made the suite crawl on a 16-core GPU machine
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


@pytest.fixture(autouse=True)
def on_gpu(request, monkeypatch):
    """A gpu-marked test sees `auto` as cuda, as a user's GPU machine would."""
    if request.node.get_closest_marker("gpu"):
        monkeypatch.setenv(DEVICE_ENV, "cuda")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)"))
        if item.get_closest_marker("tensorrt") and not (has_cuda and has_trt):
            item.add_marker(pytest.mark.skip(
                reason="needs TensorRT and a CUDA GPU (TensorRT not installed or no GPU here)"))


@pytest.fixture
def run_cli():
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return invoke


@pytest.fixture
def offline(monkeypatch):
    """No route to any download server: a proxy on a closed loopback port."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


TRAINED = Path(__file__).parent / "data" / "resnet20-digits.pt"


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """The resnet20 trained for 10 epochs on digits that later tests build on, committed as
    test data (`make test-data` remakes it): training gives other weights with another thread
    count or instruction set, so a fixture trained here would test another model on each
    machine. A copy, so no test can change the committed file."""
    from resnet_edge.zoo import load_model
    out = tmp_path_factory.mktemp("run") / "resnet20-digits"
    out.mkdir()
    shutil.copyfile(TRAINED, out / "model.pt")
    return SimpleNamespace(model_path=out / "model.pt", card=load_model(str(out / "model.pt"))[1])


@pytest.fixture(scope="session")
def digits_workdir(trained_digits, tmp_path_factory):
    """The trained digits model exported: model.onnx, model.fp16.onnx, model.pt, manifest."""
    from resnet_edge.export import export_model
    from resnet_edge.zoo import load_model
    model, card = load_model(str(trained_digits.model_path))
    out = tmp_path_factory.mktemp("work") / "resnet20"
    export_model(model, card, out)
    return out


@pytest.fixture(scope="session")
def calibrated_workdir(digits_workdir, tmp_path_factory):
    """The digits work directory calibrated (tensorrt recipe, 128 images, minmax): every ONNX
    file and the calibration cache a TensorRT build can use."""
    import shutil
    from resnet_edge.calibration import calibrate
    work = tmp_path_factory.mktemp("calibrated") / "work"
    shutil.copytree(digits_workdir, work)
    calibrate(work, "digits:train", samples=128, method="minmax", holdout=50)
    return work


@pytest.fixture(scope="session")
def measured(digits_workdir, tmp_path_factory):
    """A bench --json report of the digits model: ort fp32 at batch 1 and 8."""
    path = tmp_path_factory.mktemp("bench") / "main.json"
    result = CliRunner().invoke(cli, ["bench", str(digits_workdir), "--backends", "ort", "--precisions",
                                      "fp32", "--batch-sizes", "1,8", "--iterations", "60",
                                      "--json", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def parity_main(calibrated_workdir, tmp_path_factory):
    """A parity --json report of the calibrated digits model: ort fp32 and int8, 128 images."""
    path = tmp_path_factory.mktemp("parity") / "main.json"
    result = CliRunner().invoke(cli, ["parity", str(calibrated_workdir), "--backends", "ort",
                                      "--precisions", "fp32,int8", "--limit", "128", "--json", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())
