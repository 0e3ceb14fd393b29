pytest_plugins = ["pytester"]

import importlib.util

import pytest
import torch
from click.testing import CliRunner

from resnet_edge.cli import cli


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


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A resnet20 trained for a few epochs on digits: the checkpoint later tests build on."""
    from resnet_edge.train import TrainConfig, train
    out = tmp_path_factory.mktemp("run") / "resnet20-digits"
    return train(TrainConfig("resnet20", "digits", out, epochs=10, seed=0))


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
