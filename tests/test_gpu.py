"""The default gates, graphs and energy on a real NVIDIA GPU (`make test-gpu`); skipped with the
reason elsewhere. fp32 here is IEEE fp32 on every backend: the gates are the CPU's gates."""

import json

import numpy as np
import pytest
import torch

from resnet_edge.backends import OrtBackend, TorchBackend
from resnet_edge.runtime import providers
from resnet_edge.runtime.gpu import tf32_unavailable

pytestmark = pytest.mark.gpu


def _ort_cuda() -> str | None:
    return providers.unavailable("cuda")


needs_ort_cuda = pytest.mark.skipif("_ort_cuda()", reason="ONNX Runtime's CUDA provider cannot "
                                    "load here (onnxruntime-gpu for this CUDA major is needed)")


def _rows(report):
    return {(r["backend"], r["precision"]): r for r in report["candidates"]}


@needs_ort_cuda
def test_default_parity_gates_pass_on_the_gpu_with_every_gpu_row(calibrated_workdir, run_cli,
                                                                  tmp_path, capfd):
    result = run_cli("parity", calibrated_workdir, "--data", "digits:test", "--cuda-graph",
                     "--json", tmp_path / "p.json")
    report = json.loads((tmp_path / "p.json").read_text())
    rows = _rows(report)
    failed = [f"{k}: {g['gate']} {g['value']}" for k, r in rows.items() for g in r["gates"]
              if g["passed"] is False]
    assert result.exit_code == 0, (failed, result.output)
    assert "EP Error" not in capfd.readouterr().out + result.output
    assert report["reference"]["device"] == "torch fp32 (cuda)"
    assert report["reference"]["settings"] == {"tf32": False}
    ran = {k for k, r in rows.items() if r["status"] == "ran"}
    expected = {("torch", "fp16"), ("ort", "fp32"), ("ort", "fp16"), ("ort", "int8")}
    if not tf32_unavailable("cuda"):
        expected |= {("torch", "tf32"), ("ort", "tf32")}
    assert expected <= ran, rows
    for key in ran & {("ort", "fp32"), ("ort", "tf32"), ("ort", "fp16"), ("ort", "int8")}:
        row = rows[key]
        assert "(CUDA" in row["device"], row["device"]
        name, options = row["settings"]["providers"][0]
        assert name == "CUDAExecutionProvider"
        assert options["use_tf32"] == ("1" if key[1] == "tf32" else "0")
        assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    # the CUDA provider's int8 is Q/DQ around float kernels, and the row says so
    assert providers.CUDA_INT8 in rows[("ort", "int8")]["device"]
    # IEEE fp32 on ONNX Runtime's CUDA: well inside the CPU's 1e-3 gate
    assert rows[("ort", "fp32")]["metrics"]["max_abs"] < 1e-3
    # every GPU row replayed as a graph, equal to its own eager run
    graphs = [r for r in rows.values() if r["status"] == "ran" and "cuda_graph" in r]
    assert graphs and all(r["cuda_graph"].get("max_abs") == 0.0 for r in graphs), \
        {r["device"]: r["cuda_graph"] for r in graphs}


@needs_ort_cuda
def test_tensorrt_provider_is_probed_and_said_in_one_line(digits_workdir, run_cli, tmp_path, capfd):
    result = run_cli("parity", digits_workdir, "--data", "digits:test", "--limit", "64",
                     "--backends", "ort", "--precisions", "fp32,fp16",
                     "--ort-providers", "tensorrt,cuda", "--json", tmp_path / "p.json")
    out = capfd.readouterr()
    assert "EP Error" not in out.out + out.err + result.output
    rows = _rows(json.loads((tmp_path / "p.json").read_text()))
    assert rows[("ort-cuda", "fp32")]["status"] == "ran"
    assert "(CUDA" in rows[("ort-cuda", "fp32")]["device"]
    reason = providers.unavailable("tensorrt")
    if reason:  # no libnvinfer here: each TensorRT row says why, and exit 3 since it was named
        assert result.exit_code == 3
        assert rows[("ort-tensorrt", "fp16")]["reason"] == reason and "ort on TensorRT" in reason
    else:
        assert rows[("ort-tensorrt", "fp16")]["status"] == "ran"
        assert "(TensorRT" in rows[("ort-tensorrt", "fp16")]["device"]


@needs_ort_cuda
def test_bench_on_the_gpu_times_devices_replays_graphs_and_reads_nvml_energy(digits_workdir,
                                                                             run_cli, tmp_path):
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    result = run_cli("bench", digits_workdir, "--backends", "torch,ort", "--precisions", "fp32,fp16",
                     "--batch-sizes", "1,8", "--iterations", "50", "--cuda-graph", "--power",
                     "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    backends = {r["backend"] for r in report["results"]}
    assert {"torch", "torch+graph", "ort", "ort+graph"} <= backends, report["skipped"]
    assert all(r["device_compute"] for r in report["results"])
    speedups = report["graph_speedup"]
    assert speedups and all(s["device_compute"]["ratio"] > 0 for s in speedups)
    assert "graph/eager" in result.stdout
    if report["power"].get("source") == "nvml":
        # the board the rows ran on, by the CUDA device's UUID (never NVML's index 0)
        from resnet_edge.runtime.power import cuda_device
        assert cuda_device()["uuid"] in report["power"]["covers"], report["power"]
        for row in report["results"]:
            energy = row["power"]
            assert energy["seconds"] >= 2.0, energy
            assert 0 < energy["rails_mw"]["GPU board"] < 2_000_000 and energy["mj_per_image"]["GPU board"] > 0
    else:
        assert "nvidia-smi" in report["power"].get("source", "") or "reason" in report["power"]


def test_torch_tf32_puts_the_callers_flags_back():
    if tf32_unavailable("cuda"):
        pytest.skip(tf32_unavailable("cuda"))
    from resnet_edge.zoo import load_model
    model, _ = load_model("resnet20")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, False  # the caller's own choice
        fp32 = TorchBackend(model, "fp32", "cuda").run(x)
        tf32 = TorchBackend(model, "tf32", "cuda").run(x)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)
        assert not np.array_equal(fp32, tf32)  # TF32 ran, and fp32 did not
        assert np.abs(fp32 - tf32).max() < 0.05 * np.abs(fp32).max()
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@needs_ort_cuda
def test_ort_cuda_graph_equals_eager_and_fp32_is_ieee(digits_workdir):
    eager = OrtBackend(digits_workdir / "model.onnx", "fp32", "cuda")
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32), dtype=np.float32)
    graph = eager.graph(8, (3, 32, 32))
    np.testing.assert_array_equal(graph.run(x), eager.run(x))
    np.testing.assert_array_equal(graph.run(x[:5]), eager.run(x[:5]))  # a short batch is padded
    cpu = OrtBackend(digits_workdir / "model.onnx", "fp32", "cpu").run(x)
    assert np.abs(eager.run(x) - cpu).max() < 1e-4


def test_the_pytest_plugin_passes_on_the_gpu(digits_workdir, pytester):
    if _ort_cuda():
        pytest.skip(_ort_cuda())
    result = pytester.runpytest_inprocess(f"--parity-workdir={digits_workdir}",
                                          "--parity-device=cuda", "--parity-precisions=fp32,fp16",
                                          "--parity-limit=128", "-q")
    outcomes = result.parseoutcomes()
    # torch fp16, ort fp32 and ort fp16, three gates each; TensorRT's skip where it is missing
    assert not outcomes.get("failed") and outcomes["passed"] >= 9, result.stdout.str()
