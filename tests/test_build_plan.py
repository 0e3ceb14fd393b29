"""The (TensorRT version, precision) -> ONNX file + flags decision, without TensorRT."""

import pytest

from resnet_edge.runtime.trt_plan import batch_profile, build_plan, trtexec_command
from resnet_edge.runtime.trt_rules import cache_header, family_note, reheader_cache

EB, ST = ("EXPLICIT_BATCH",), ("STRONGLY_TYPED",)
BUILD_85, BUILD = ("--buildOnly",), ("--skipInference",)
TABLE = [
    # version   precision  onnx                    network  builder flags     trtexec flags
    ("8.5.2",   "fp32", "model.onnx",            EB, (),               ("--noTF32", *BUILD_85)),
    ("8.5.2",   "fp16", "model.onnx",            EB, ("FP16",),        ("--fp16", *BUILD_85)),
    ("8.5.2",   "int8", "model.int8.onnx",       EB, ("INT8", "FP16"), ("--int8", "--fp16", *BUILD_85)),
    ("8.6.2",   "fp32", "model.onnx",            EB, (),               ("--noTF32", *BUILD)),
    ("8.6.2",   "fp16", "model.onnx",            EB, ("FP16",),        ("--fp16", *BUILD)),
    ("8.6.2",   "int8", "model.int8.onnx",       EB, ("INT8", "FP16"), ("--int8", "--fp16", *BUILD)),
    ("10.3.0",  "fp32", "model.onnx",            (), (),               ("--noTF32", *BUILD)),
    ("10.3.0",  "fp16", "model.onnx",            (), ("FP16",),        ("--fp16", *BUILD)),
    ("10.3.0",  "int8", "model.int8.onnx",       (), ("INT8", "FP16"), ("--int8", "--fp16", *BUILD)),
    ("10.13.0", "fp32", "model.onnx",            ST, (),               ("--stronglyTyped", "--noTF32", *BUILD)),
    ("10.13.0", "fp16", "model.fp16.onnx",       ST, (),               ("--stronglyTyped", *BUILD)),
    ("10.13.0", "int8", "model.int8-fp16.onnx",  ST, (),               ("--stronglyTyped", *BUILD)),
    ("11.4.0",  "fp32", "model.onnx",            (), (),               ("--noTF32", *BUILD)),
    ("11.4.0",  "fp16", "model.fp16.onnx",       (), (),               BUILD),
    ("11.4.0",  "int8", "model.int8-fp16.onnx",  (), (),               BUILD),
    # tf32: fp32's model with TensorRT's default TF32 left on, and named so
    ("8.6.2",   "tf32", "model.onnx",            EB, (),               BUILD),
    ("10.3.0",  "tf32", "model.onnx",            (), (),               BUILD),
    ("10.13.0", "tf32", "model.onnx",            ST, (),               ("--stronglyTyped", *BUILD)),
    ("11.4.0",  "tf32", "model.onnx",            (), (),               BUILD),
]


@pytest.mark.parametrize("version,precision,onnx_file,network,flags,trtexec", TABLE)
def test_build_plan_table(version, precision, onnx_file, network, flags, trtexec):
    plan = build_plan(version, precision)
    assert (plan.onnx_file, plan.network_flags, plan.builder_flags, plan.trtexec_flags) == (
        onnx_file, network, flags, trtexec)
    assert plan.strongly_typed == (version.startswith("11") or version == "10.13.0")
    assert plan.cleared_flags == (("TF32",) if precision == "fp32" else ())  # fp32 means fp32
    assert not plan.calibration_cache and not plan.static_batch


@pytest.mark.parametrize("version", ["8.5.2", "8.6.2", "10.3.0"])
def test_implicit_int8_from_the_calibration_cache(version):
    plan = build_plan(version, "int8", int8_source="cache", typing="weak")
    assert plan.calibration_cache and plan.onnx_file == "model.onnx"
    assert plan.builder_flags == ("INT8", "FP16")
    assert plan.trtexec_flags[:2] == ("--int8", "--fp16")


def test_tf32_is_a_gpu_engine_only():
    with pytest.raises(ValueError, match="DLA runs fp16 and int8 only; build tf32 for the GPU"):
        build_plan("10.3.0", "tf32", dla=True)


def test_typing_choices_on_10x():
    assert build_plan("10.3.0", "fp16", typing="strong").onnx_file == "model.fp16.onnx"
    assert build_plan("10.13.0", "fp16", typing="weak").builder_flags == ("FP16",)
    assert build_plan("10.13.0", "int8", int8_float="fp32").onnx_file == "model.int8.onnx"
    # DLA keeps builder flags on 10.x, takes int8 from the cache and builds one batch size
    dla = build_plan("10.3.0", "int8", dla=True)
    assert dla.builder_flags == ("INT8", "FP16") and dla.calibration_cache and dla.static_batch
    assert build_plan("10.3.0", "int8", dla=True, int8_source="qdq").onnx_file == "model.int8.onnx"


def test_static_batch_profiles():
    assert batch_profile(build_plan("8.5.2", "fp16", dla=True), 32, 8) == (8, 8, 8)
    assert batch_profile(build_plan("8.5.2", "fp16"), 32, 8) == (1, 8, 32)
    assert batch_profile(build_plan("8.5.2", "fp16"), 4, 8) == (1, 4, 4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(tensorrt_version="11.4.0", precision="int8", int8_source="cache"), "strongly typed only"),
    (dict(tensorrt_version="11.4.0", precision="fp16", typing="weak"), "strongly typed only"),
    (dict(tensorrt_version="8.6.2", precision="fp16", typing="strong"), "no strongly typed"),
    (dict(tensorrt_version="10.13.0", precision="int8", int8_source="cache", typing="strong"), "not from calibration.cache"),
    (dict(tensorrt_version="10.3.0", precision="fp32", dla=True), "DLA runs fp16 and int8 only"),
    (dict(tensorrt_version="10.8.0", precision="fp16", dla=True), "no DLA support"),
    (dict(tensorrt_version="11.4.0", precision="int8", dla=True), "no DLA support"),
    (dict(tensorrt_version="8.5.2", precision="fp16", version_compatible=True), "8.6 or newer"),
    (dict(tensorrt_version="8.5.2", precision="fp16", hardware_compatible=True), "8.6 or newer"),
    (dict(tensorrt_version="9.2.0", precision="fp16"), "not supported"),
    (dict(tensorrt_version="8.4.3", precision="fp16"), "not supported"),
])
def test_impossible_combinations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_plan(**kwargs)


def test_trtexec_line_follows_the_plan():
    plan = build_plan("8.5.2", "int8", dla=True)
    line = trtexec_command(plan, engine="model.int8.engine", input_name="input",
                           input_shape=(3, 224, 224), profile=batch_profile(plan, 32, 8),
                           workspace_mib=2048, static_model=False, timing_cache="timing.cache",
                           calibration_cache="engines/orin-trt8.5/calibration.cache",
                           dla_core=0, gpu_fallback=True)
    assert line == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.int8.engine",
                    "--minShapes=input:8x3x224x224", "--optShapes=input:8x3x224x224",
                    "--maxShapes=input:8x3x224x224", "--memPoolSize=workspace:2048",
                    "--int8", "--fp16", "--buildOnly",
                    "--calib=engines/orin-trt8.5/calibration.cache",
                    "--timingCacheFile=timing.cache", "--useDLACore=0", "--allowGPUFallback"]
    with pytest.raises(ValueError, match="headed for this TensorRT"):
        trtexec_command(plan, engine="e", input_name="input", input_shape=(3, 8, 8),
                        profile=(8, 8, 8), workspace_mib=1, static_model=False)


def test_compatibility_flags_reach_trtexec():
    plan = build_plan("10.3.0", "fp16", version_compatible=True, hardware_compatible=True)
    assert {"--versionCompatible", "--hardwareCompatibilityLevel=ampere+"} <= set(plan.trtexec_flags)


def test_cache_headers_name_the_tensorrt_version():
    assert cache_header("8.5.2") == "TRT-8502-EntropyCalibration2"
    assert cache_header("8.6.2") == "TRT-8602-EntropyCalibration2"
    assert cache_header("10.3.0") == "TRT-100300-EntropyCalibration2"
    assert reheader_cache("TRT-8502-EntropyCalibration2\ninput: 3c010a14\n", "10.3.0") == (
        "TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")


@pytest.mark.parametrize("target,here,says", [
    ("10.3.0", "10.3.1", False), ("10.3.0", "8.6.2", True), ("10.13.0", "10.3.0", True),
    ("10.13.0", "10.16.0", False), ("8.5.2", "8.6.2", True), ("11.4.0", "11.1.0", False),
])
def test_a_bundle_built_on_another_family_says_so(target, here, says):
    note = family_note(target, here)
    assert (note is not None) == says
    if says:
        assert note.count("\n") == 0 and target in note and here in note


@pytest.mark.parametrize("version,newest", [("8.5.2", 17), ("8.6.2", 17), ("10.3.0", 20),
                                            ("10.13.0", 20), ("10.16.0", 24), ("11.1.0", 24)])
def test_the_parser_opset_each_tensorrt_reads(version, newest):
    from resnet_edge.runtime.trt_rules import max_onnx_opset, opset_problem
    assert max_onnx_opset(version) == newest
    assert opset_problem("model.onnx", newest, version) is None
    assert f"reads opset <= {newest}" in opset_problem("model.onnx", newest + 1, version)


def test_each_cuda_set_is_built_for_one_cuda_driver_and_the_x86_targets_have_theirs():
    """pip install 'resnet-edge[cuda12]' (or cuda13) is for x86 (JetPack ships TensorRT): an
    onnxruntime-gpu, a torch and a TensorRT of that CUDA major (TensorRT 10, whose libnvinfer.so.10
    every onnxruntime-gpu's TensorRT provider links) and a cuda-python of that major. The old
    extras resolved onnxruntime-gpu, torch and TensorRT 11 for CUDA 13 on a CUDA 12 driver."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from resnet_edge.deploy import TARGETS
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not {"gpu", "tensorrt", "tensorrt-cu12", "tensorrt-cu13"} & set(extras)
    served = {}
    # releases on PyPI, and the CUDA major each was built for (their metadata and libraries)
    ort = {"1.18.1": 11, "1.19.0": 12, "1.22.0": 12, "1.26.0": 12, "1.27.0": 13, "1.31.1": 13}
    torch = {"2.4.0": 12, "2.10.0": 12, "2.11.0": 13, "2.14.1": 13}
    tensorrt = {"10.0.1": 10, "10.13.3.9": 10, "10.16.1.11": 10, "11.0.0.114": 11, "11.4.0.106": 11}
    for major in (12, 13):
        wanted = {r.name: r.specifier for r in map(Requirement, extras[f"cuda{major}"])}
        assert set(wanted) == {"onnxruntime-gpu", "torch", f"tensorrt-cu{major}", "cuda-python",
                               "nvidia-ml-py"}
        assert {v for v, cuda in ort.items() if wanted["onnxruntime-gpu"].contains(v)} == {
            v for v, cuda in ort.items() if cuda == major}
        assert {v for v, cuda in torch.items() if wanted["torch"].contains(v)} == {
            v for v, cuda in torch.items() if cuda == major}
        assert {trt for v, trt in tensorrt.items() if wanted[f"tensorrt-cu{major}"].contains(v)} == {10}
        spec = wanted["cuda-python"]
        assert [v for v in ("11.8.0", "12.0.0", "12.9.0", "13.0.1", "13.2.0", "14.0.0") if spec.contains(v)] == (
            ["12.0.0", "12.9.0"] if major == 12 else ["13.0.1", "13.2.0"])
        served[major] = spec
    for target in (t for t in TARGETS.values() if not t.jetson):
        wanted = Requirement(f"cuda-python{target.cuda_python or '>=12,<14'}").specifier
        assert any(any(spec.contains(v) and wanted.contains(v) for v in ("12.6.1", "13.0.1"))
                   for spec in served.values()), target


def test_make_picks_the_set_by_the_drivers_cuda(tmp_path):
    """The Makefile reads nvidia-smi's "CUDA Version" on an x86 GPU machine."""
    import os
    import subprocess
    from pathlib import Path
    root = Path(__file__).parents[1]
    for cuda, extra in (("12.8", "cuda12"), ("13.0", "cuda13"), ("14.1", "cuda13"), ("", "cuda12")):
        stubs = tmp_path / f"bin{cuda}"
        stubs.mkdir()
        (stubs / "nvidia-smi").write_text(f"#!/bin/sh\necho '| NVIDIA-SMI 580.159   Driver Version: 580.159   "
                                          f"{'CUDA Version: ' + cuda if cuda else ''}     |'\n")
        (stubs / "uname").write_text("#!/bin/sh\necho x86_64\n")
        for stub in stubs.iterdir():
            stub.chmod(0o755)
        run = subprocess.run(["make", "-n", "-C", str(root), "venv", "VENV=" + str(tmp_path / "venv")],
                             capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"})
        assert run.returncode == 0, run.stderr
        assert f'.[{extra},dev]' in run.stdout, run.stdout


def test_make_does_not_hang_on_a_wedged_driver(tmp_path):
    """Every target (make -n and clean included) hung when nvidia-smi hung."""
    import os
    import subprocess
    from pathlib import Path
    root = Path(__file__).parents[1]
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexec sleep 600\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    # without the probe's bound this waits out the stub's 600 s, and the timeout fails the test
    run = subprocess.run(["make", "-n", "-C", str(root), "clean", "NVIDIA_SMI_TIMEOUT=1"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr


def test_every_install_line_names_an_extra_the_clone_has():
    """Skip lines said pip install 'resnet-edge[tensorrt-cu12]': a name not on the package
    index (and an extra that no longer existed)."""
    import re
    import tomllib
    from pathlib import Path
    root = Path(__file__).parents[1]
    extras = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {m for path in (root / "resnet_edge").rglob("*.py")
             for m in re.findall(r"install_hint\([\"'](\w+)[\"']\)", path.read_text())}
    assert named and named <= extras, named - extras
    sources = "".join(p.read_text() for p in (root / "resnet_edge").rglob("*.py"))
    assert "pip install 'resnet-edge[" not in sources.replace("`pip install 'resnet-edge[...]'`", "")
