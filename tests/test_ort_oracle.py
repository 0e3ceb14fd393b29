"""Every ONNX Runtime provider-option set this tool builds, held to ONNX Runtime's own parsing
rules for each release the extras allow (tests/oracles/onnxruntime.py), and the oracle shown to
refuse a known-bad example of each rule."""

import itertools

import pytest

from oracles import onnxruntime as oracle
from resnet_edge.runtime import providers
from resnet_edge.runtime.ort import ProviderFellBack, _printed_reason, make_session

# the oldest and newest release of each CUDA major's set (pyproject.toml's cuda12 and cuda13)
RELEASES = ("1.19.0", "1.22.0", "1.26.0", "1.27.0", "1.31.1")
PRECISIONS = ("fp32", "tf32", "fp16", "int8", "int8-fp16")


def every_option_set(cache_dir):
    profile = {"min": 1, "opt": 8, "max": 32}
    for provider, precision, purpose, graph, cached in itertools.product(
            ("tensorrt", "cuda", "cpu"), PRECISIONS, ("parity", "bench"), (False, True), (False, True)):
        yield (provider, precision, purpose, graph, cached), providers.session_providers(
            provider, precision, purpose=purpose, cache_dir=cache_dir if cached else None,
            profile=profile if provider == "tensorrt" else None, input_shape=(3, 224, 224),
            cuda_graph=graph)


@pytest.mark.parametrize("release", RELEASES)
def test_every_option_set_the_tool_builds_is_taken_as_asked(release, tmp_path):
    from resnet_edge.deploy.verify_bundle import CUDA_SESSION
    for row, session in every_option_set(tmp_path / "work" / "ort-tensorrt"):
        providers.make_cache_folders(session)
        assert oracle.check(release, session) == [], row
    assert oracle.check(release, CUDA_SESSION) == []  # verify.py's fallback on a device's CUDA


def test_cache_folders_are_made_with_their_parents(tmp_path):
    session = providers.session_providers("tensorrt", "fp16", cache_dir=tmp_path / "w" / "ort-tensorrt")
    assert [f.message for f in oracle.check("1.31.1", session)] == [
        f"Failed to create directory {tmp_path}/w/ort-tensorrt/fp16"] * 2
    providers.make_cache_folders(session)
    assert (tmp_path / "w" / "ort-tensorrt" / "fp16").is_dir()
    assert oracle.check("1.31.1", session) == []


def test_the_oracle_refuses_what_each_release_refuses(tmp_path):
    ones = [(oracle.TRT, {"trt_fp16_enable": "1", "trt_int8_enable": "0"})]
    said = [f.message for f in oracle.check("1.31.1", ones)]
    assert said == ["[ERROR] [TensorRT] The value for the key 'trt_fp16_enable' should be 'True' or "
                    "'False'. Default value is 'False'.",
                    "[ERROR] [TensorRT] The value for the key 'trt_int8_enable' should be 'True' or "
                    "'False'. Default value is 'False'."]
    # the CUDA provider is the other way round: istream >> bool takes 1/0 only
    words = oracle.check("1.31.1", [(oracle.CUDA, {"use_tf32": "false"})])
    assert [f.message for f in words] == ['Failed to parse provider option "use_tf32" with value "false".']
    assert oracle.check("1.31.1", [(oracle.CUDA, {"cudnn_conv_algo_search": "heuristic"})])
    assert oracle.check("1.31.1", [(oracle.CUDA, {"device_id": "zero"})])
    assert oracle.check("1.31.1", [(oracle.TRT, {"device_id": "zero"})])
    assert [f.message for f in oracle.check("1.31.1", [(oracle.TRT, {"trt_fp8_enable": "True"})])] == [
        "Invalid TensorRT EP option: trt_fp8_enable"]
    assert oracle.check("1.22.0", [(oracle.TRT, {"trt_bf16_enable": "True"})])
    assert oracle.check("1.23.2", [(oracle.TRT, {"trt_bf16_enable": "True"})]) == []
    assert oracle.check("1.18.0", [(oracle.CUDA, {"fuse_conv_bias": "1"})])
    assert oracle.check("1.31.1", [(oracle.TRT, {"trt_fp16_enable": 1})])  # not a string
    with pytest.raises(ValueError):
        oracle.check("1.17.1", ones)


def test_releases_before_1_23_fall_back_whatever_the_caller_asks():
    bad = [(oracle.TRT, {"trt_fp16_enable": "1"}), (oracle.CUDA, {})]
    for release, degraded in (("1.19.0", True), ("1.22.0", True), ("1.23.2", False), ("1.31.1", False)):
        kinds = [f.kind for f in oracle.check(release, bad, enable_fallback=0)]
        assert ("degrade" in kinds) is degraded, release
    assert "degrade" in [f.kind for f in oracle.check("1.31.1", bad, enable_fallback=1)]


def test_a_session_that_came_up_elsewhere_is_refused_with_the_reason(digits_workdir):
    """This onnxruntime has no TensorRT provider: asked for it, ONNX Runtime warns and makes a
    CPU session; make_session compares and refuses it."""
    import onnxruntime
    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime lists TensorRT (tests/test_ort_releases.py covers fallback)")
    session = providers.session_providers("tensorrt", "fp16")
    with pytest.warns(UserWarning), pytest.raises(ProviderFellBack, match="Tensorrt did not load"):
        make_session(digits_workdir / "model.onnx", session)


def test_the_fallback_block_becomes_one_line():
    printed = ("*************** EP Error ***************\n"
               "EP Error /onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:490 void "
               "onnxruntime::python::RegisterTensorRTPluginsAsCustomOps(PySessionOptions&, const "
               "onnxruntime::ProviderOptions&) Please install TensorRT libraries as mentioned in the "
               "GPU requirements page, make sure they're in the PATH or LD_LIBRARY_PATH, and that your "
               "GPU is supported.\n when using [('TensorrtExecutionProvider', {})]\n"
               "Falling back to ['CPUExecutionProvider'] and retrying.\n")
    reason = _printed_reason(printed)
    assert reason.startswith("Please install TensorRT libraries as mentioned in the GPU requirements")
    assert reason.endswith("that your GPU is supported.") and "\n" not in reason
    assert _printed_reason("nothing printed") is None
