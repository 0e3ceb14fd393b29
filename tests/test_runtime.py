"""Backends and engines: the pure decisions everywhere, the real GPU paths where a GPU is."""

import importlib.util

import numpy as np
import pytest
import torch

from resnet_edge.runtime import trt_rules
from resnet_edge.backends import BackendUnavailable, OrtBackend, TorchBackend, open_backend
from resnet_edge.runtime.latency import measure

META = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}


def test_engine_paths_name_gpu_and_tensorrt_version(tmp_path):
    path = trt_rules.engine_path(tmp_path, "NVIDIA H100 80GB HBM3", "10.13.0.35", "int8")
    assert path == tmp_path / "engines" / "nvidia-h100-80gb-hbm3-trt10.13" / "model.int8.engine"


@pytest.mark.parametrize("meta,here,reason", [
    (META, ("10.3.0", "Orin", "8.7"), None),
    (META, ("10.3.0.26", "Orin", "8.7"), None),
    (META, ("8.6.2", "Orin", "8.7"), "built with TensorRT 10.3.0, this machine has 8.6.2"),
    (META, ("10.3.0", "NVIDIA A100", "8.0"), "built for Orin (compute capability 8.7), this GPU is NVIDIA A100"),
    ({**META, "version_compatible": True}, ("10.7.0", "Orin", "8.7"), None),
    ({**META, "version_compatible": True}, ("11.4.0", "Orin", "8.7"), "cannot load on 11.4.0"),
    ({**META, "hardware_compatibility": "ampere_plus"}, ("10.3.0", "NVIDIA L4", "8.9"), None),
    ({**META, "hardware_compatibility": "ampere_plus"}, ("10.3.0", "Tesla T4", "7.5"), "Ampere+"),
])
def test_engine_compatibility_rules(meta, here, reason):
    got = trt_rules.incompatibility(meta, *here)
    if reason is None:
        assert got is None
    else:
        assert reason in got and "rebuild" in got


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed: the tensorrt-marked tests cover it")
def test_trt_backend_is_unavailable_with_a_reason_here(tmp_path):
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        open_backend("trt", "fp16", tmp_path)


def test_torch_fp16_backend_leaves_the_reference_model_in_fp32():
    from resnet_edge.zoo import load_model
    model, _ = load_model("resnet20")
    TorchBackend(model, "fp16")
    assert next(model.parameters()).dtype == torch.float32


def test_ort_backend_reports_its_provider(digits_workdir):
    backend = OrtBackend(digits_workdir / "model.onnx", provider="cpu")
    assert backend.label == "ort fp32 (CPU)" and backend.device == "cpu"
    stats = measure(backend, np.zeros((2, 3, 32, 32), np.float32), iterations=3, warmup=1)
    assert stats["host_to_host"]["iterations"] == 3 and stats["device_compute"] is None


@pytest.mark.gpu
def test_torch_cuda_fp16_agrees_with_fp32_and_times_device_compute():
    from resnet_edge.zoo import load_model
    model, _ = load_model("resnet18", weights="none")
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)
    ref = TorchBackend(model, "fp32", "cuda")
    half = TorchBackend(model, "fp16", "cuda")
    a, b = ref.run(x), half.run(x)
    assert a.dtype == b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999
    stats = measure(half, x, iterations=20, warmup=5)
    device, host = stats["device_compute"], stats["host_to_host"]
    assert device is not None and 0 < device["p50_ms"] <= host["p50_ms"]
