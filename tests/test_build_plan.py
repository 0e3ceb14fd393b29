"""The (TensorRT version, precision) -> ONNX file + flags decision, without TensorRT."""

import pytest

from resnet_edge.runtime.trt_engine import build_plan, cache_header, reheader_cache, trtexec_command

EB, ST = ("EXPLICIT_BATCH",), ("STRONGLY_TYPED",)
TABLE = [
    # version   precision  onnx               network  builder flags      trtexec flags
    ("8.5.2",   "fp32", "model.onnx",        EB, (),                 ()),
    ("8.5.2",   "fp16", "model.onnx",        EB, ("FP16",),          ("--fp16",)),
    ("8.5.2",   "int8", "model.int8.onnx",   EB, ("INT8", "FP16"),   ("--int8", "--fp16")),
    ("8.6.2",   "fp32", "model.onnx",        EB, (),                 ()),
    ("8.6.2",   "fp16", "model.onnx",        EB, ("FP16",),          ("--fp16",)),
    ("8.6.2",   "int8", "model.int8.onnx",   EB, ("INT8", "FP16"),   ("--int8", "--fp16")),
    ("10.3.0",  "fp32", "model.onnx",        (), (),                 ()),
    ("10.3.0",  "fp16", "model.onnx",        (), ("FP16",),          ("--fp16",)),
    ("10.3.0",  "int8", "model.int8.onnx",   (), ("INT8", "FP16"),   ("--int8", "--fp16")),
    ("10.13.0", "fp32", "model.onnx",        ST, (),                 ("--stronglyTyped",)),
    ("10.13.0", "fp16", "model.fp16.onnx",   ST, (),                 ("--stronglyTyped",)),
    ("10.13.0", "int8", "model.int8.onnx",   ST, (),                 ("--stronglyTyped",)),
    ("11.4.0",  "fp32", "model.onnx",        (), (),                 ()),
    ("11.4.0",  "fp16", "model.fp16.onnx",   (), (),                 ()),
    ("11.4.0",  "int8", "model.int8.onnx",   (), (),                 ()),
]


@pytest.mark.parametrize("version,precision,onnx_file,network,flags,trtexec", TABLE)
def test_build_plan_table(version, precision, onnx_file, network, flags, trtexec):
    plan = build_plan(version, precision)
    assert (plan.onnx_file, plan.network_flags, plan.builder_flags, plan.trtexec_flags) == (
        onnx_file, network, flags, trtexec)
    assert plan.strongly_typed == (version.startswith("11") or version == "10.13.0")
    assert not plan.calibration_cache


@pytest.mark.parametrize("version", ["8.5.2", "8.6.2", "10.3.0"])
def test_implicit_int8_from_the_calibration_cache(version):
    plan = build_plan(version, "int8", int8_source="cache", typing="weak")
    assert plan.calibration_cache and plan.onnx_file == "model.onnx"
    assert plan.builder_flags == ("INT8", "FP16")
    assert plan.trtexec_flags == ("--int8", "--fp16", "--calib=calibration.cache")


def test_typing_choices_on_10x():
    assert build_plan("10.3.0", "fp16", typing="strong").onnx_file == "model.fp16.onnx"
    assert build_plan("10.13.0", "fp16", typing="weak").builder_flags == ("FP16",)
    # DLA keeps builder flags on 10.x even where strong typing is the default
    assert build_plan("10.13.0", "int8", dla=True).builder_flags == ("INT8", "FP16")


@pytest.mark.parametrize("kwargs,message", [
    (dict(tensorrt_version="11.4.0", precision="int8", int8_source="cache"), "strongly typed only"),
    (dict(tensorrt_version="11.4.0", precision="fp16", typing="weak"), "strongly typed only"),
    (dict(tensorrt_version="8.6.2", precision="fp16", typing="strong"), "no strongly typed"),
    (dict(tensorrt_version="10.13.0", precision="int8", int8_source="cache", typing="strong"), "not from calibration.cache"),
    (dict(tensorrt_version="10.3.0", precision="fp32", dla=True), "DLA runs fp16 and int8 only"),
    (dict(tensorrt_version="9.2.0", precision="fp16"), "not supported"),
    (dict(tensorrt_version="8.4.3", precision="fp16"), "not supported"),
])
def test_impossible_combinations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_plan(**kwargs)


def test_trtexec_line_follows_the_plan():
    plan = build_plan("8.5.2", "int8", int8_source="cache")
    line = trtexec_command(plan, engine="model.int8.engine", input_name="input",
                           input_shape=(3, 224, 224), max_batch=32, opt_batch=8, workspace_mib=2048,
                           timing_cache="timing.cache", dla_core=0, gpu_fallback=True)
    assert line == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.int8.engine",
                    "--minShapes=input:1x3x224x224", "--optShapes=input:8x3x224x224",
                    "--maxShapes=input:32x3x224x224", "--memPoolSize=workspace:2048",
                    "--int8", "--fp16", "--calib=calibration.cache",
                    "--timingCacheFile=timing.cache", "--useDLACore=0", "--allowGPUFallback"]


def test_cache_headers_name_the_tensorrt_version():
    assert cache_header("8.5.2") == "TRT-8502-EntropyCalibration2"
    assert cache_header("10.3.0") == "TRT-100300-EntropyCalibration2"
    assert reheader_cache("TRT-8502-EntropyCalibration2\ninput: 3c010a14\n", "10.3.0") == (
        "TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
