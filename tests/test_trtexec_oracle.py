"""Every trtexec line this tool writes, held to trtexec's own rules (tests/oracles/trtexec.py,
ported from NVIDIA's source per release), and the rules shown refusing known-bad lines."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oracles.trtexec import RELEASES, check
from resnet_edge.runtime import trt_plan

STUB = Path(__file__).parent / "oracles" / "trtexec_stub.py"


@pytest.fixture(scope="module")
def static_batch_bundle(trained_digits, tmp_path_factory):
    """`export --batch 4 --exporter torchscript` (a static batch, as the CLI recommends for DLA
    and Jetson; opset 17, which every TensorRT family parses), calibrated (37 images: not a
    whole number of batches), bundled, extracted."""
    from resnet_edge.calibration import calibrate
    from resnet_edge.deploy import make_bundle, safe_extract
    from resnet_edge.export import ExportOptions, export_model
    from resnet_edge.zoo import load_model
    base = tmp_path_factory.mktemp("static")
    model, card = load_model(str(trained_digits.model_path))
    export_model(model, card, base / "b4", ExportOptions(exporter="torchscript", batch=4))
    calibrate(base / "b4", "digits:train", samples=37, method="minmax")
    made = make_bundle(base / "b4", "jetpack6", base / "b4.tar.gz", golden=40)
    return safe_extract(made.path, base / "x")
SHAPES = ["--minShapes=input:1x3x32x32", "--optShapes=input:8x3x32x32", "--maxShapes=input:32x3x32x32"]


@pytest.mark.parametrize("release", RELEASES)
def test_shape_options_on_a_static_model_are_refused_by_every_release(release):
    line = ["trtexec", "--onnx=model.onnx", *SHAPES]
    found = check(release, line, static_model=True, qdq=False)
    assert [f.rule for f in found] == ["static-model-shapes"]
    assert found[0].message.startswith("Static model does not take explicit shapes")
    assert "sampleEngines.cpp:" in found[0].source and release.rsplit(".", 1)[0] in found[0].source
    assert not check(release, line, static_model=False, qdq=False)


@pytest.mark.parametrize("release,line,rule", [
    ("8.5.3", ["--skipInference"], "unknown-option"),  # 8.5 knows only --buildOnly
    ("11.1.0", ["--fp16"], "unknown-option"),  # 11.x is strongly typed only
    ("8.6.1", ["--stronglyTyped"], "unknown-option"),
    ("10.3.0", ["--stronglyTyped", "--fp16"], "strongly-typed-precision"),
    ("10.16.0", ["--stronglyTyped", "--int8"], "strongly-typed-precision"),
    ("8.6.1", ["--buildOnly"], "build-only-deprecated"),
    ("10.3.0", ["--fp16", "--calib=c.cache"], "calib-without-int8"),
    ("8.5.3", ["--int8", "--fp16"], "int8-without-scales"),
    # a shape for a tensor the network has no input of (its input is "input")
    ("10.3.0", ["--minShapes=images:1x3x32x32"], "shape-name-missing"),
    ("8.5.3", ["--optShapes=input:8x3x32x32,images:8x3x32x32"], "shape-name-missing"),
    # from 10.13 --best and --stronglyTyped together are an error, not a warning
    ("10.13.3", ["--stronglyTyped", "--best"], "best-strongly-typed"),
    ("10.16.0", ["--stronglyTyped", "--best"], "best-strongly-typed"),
    ("10.3.0", ["--stronglyTyped", "--best"], "strongly-typed-precision"),  # before 10.13: fp16, int8 dropped
    ("10.3.0", ["--useDLACore=0", "--buildDLAStandalone", "--allowGPUFallback"], "dla-standalone-fallback"),
    # values the parser cannot read
    ("10.3.0", ["--useDLACore=one"], "invalid-value"),
    ("10.3.0", ["--minShapes=input:1xthreex32x32"], "invalid-value"),
    ("10.16.0", ["--memPoolSize=workspace:-5"], "invalid-value"),
    ("10.3.0", ["--memPoolSize=workspace:1X"], "invalid-value"),
    ("10.3.0", ["--memPoolSize=scratch:64"], "invalid-value"),
    ("8.5.3", ["--memPoolSize=workspace:1G"], "invalid-value"),  # units came with 10.x
    ("8.6.1", ["--memPoolSize=tacticSharedMem:64"], "invalid-value"),
])
def test_known_bad_lines_from_nvidias_source_are_refused(release, line, rule):
    found = check(release, ["trtexec", "--onnx=model.onnx", *line], static_model=False, qdq=False)
    assert rule in [f.rule for f in found], found


@pytest.mark.parametrize("release,line", [
    ("8.5.3", ["--memPoolSize=workspace:1024,dlaSRAM:0.5", "--useDLACore=0", "--allowGPUFallback"]),
    ("10.3.0", ["--memPoolSize=workspace:1G,tacticSharedMem:48K", "--minShapes='input':1x3x32x32"]),
    ("10.13.3", ["--stronglyTyped"]),
])
def test_lines_trtexec_takes_are_taken(release, line):
    assert check(release, ["trtexec", "--onnx=model.onnx", *line], static_model=False, qdq=False) == []


def test_10_13_is_held_to_its_own_release():
    """The x86 and Triton targets build with 10.13: it was checked by 10.3's rules."""
    from oracles.trtexec_stub import nearest
    assert nearest("10.13.0") == "10.13.3" and nearest("10.12.0") == "10.3.0" and nearest("10.16.1") == "10.16.0"


def _plans(version):
    for precision in ("fp32", "fp16", "int8"):
        for kwargs in (dict(), dict(int8_source="cache", typing="weak"), dict(dla=True),
                       dict(version_compatible=True, hardware_compatible=True), dict(typing="weak")):
            try:
                yield trt_plan.build_plan(version, precision, **kwargs), kwargs
            except ValueError:
                continue


@pytest.mark.parametrize("release", RELEASES)
@pytest.mark.parametrize("static_model", [False, True], ids=["dynamic", "static"])
def test_every_line_the_build_plan_writes_passes_trtexec(release, static_model):
    lines = 0
    for plan, kwargs in _plans(release):
        line = trt_plan.trtexec_command(
            plan, engine="e.engine", input_name="input", input_shape=(3, 224, 224),
            profile=trt_plan.batch_profile(plan, 32, 8), workspace_mib=1024,
            static_model=static_model, timing_cache="t.cache", calibration_cache="c.cache",
            dla_core=0 if kwargs.get("dla") else None, gpu_fallback=bool(kwargs.get("dla")))
        found = check(release, line, static_model=static_model, qdq="int8" in plan.onnx_file)
        assert not found, (plan, line, found)
        assert ("--skipInference" in line) == (release != "8.5.3")  # build only, no benchmark
        assert ("--buildOnly" in line) == (release == "8.5.3")
        assert ("--noTF32" in line) == (plan.precision == "fp32")
        lines += 1
    assert lines >= 4


def test_a_static_batch_bundle_builds_with_trtexec(static_batch_bundle, tmp_path):
    """The defect: build_engine.sh gave a --batch 1 export shape options, which every trtexec
    refuses. Through the refusing stand-in, for each TensorRT family a device may have."""
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "trtexec").write_text(f"#!/bin/sh\nexec {sys.executable} {STUB} \"$@\"\n")
    (stub / "trtexec").chmod(0o755)
    for version in ("8.5.2", "8.6.2", "10.3.0", "11.4.0"):
        engine = tmp_path / "device" / version / "model.engine"
        args = tmp_path / f"args-{version}"
        env = {**os.environ, "PATH": f"{stub}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
               "TRT_VERSION": version, "ENGINE": str(engine), "TRTEXEC_ARGS": str(args)}
        run = subprocess.run(["bash", "build_engine.sh", "fp16"], cwd=static_batch_bundle, env=env,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert not any(a.startswith(("--minShapes", "--optShapes", "--maxShapes"))
                       for a in args.read_text().splitlines())
    # DLA's int8 comes from calibration.cache: the README's line, as written, for the Jetson
    # families that have a DLA (JetPack 5 and 6)
    readme = (static_batch_bundle / "README.md").read_text()
    assert "./build_engine.sh int8 --dla-core 0 --gpu-fallback" in readme
    for version in ("8.5.2", "10.3.0"):
        args = tmp_path / f"dla-{version}"
        env = {**os.environ, "PATH": f"{stub}:{os.path.dirname(sys.executable)}:/usr/bin:/bin",
               "TRT_VERSION": version, "ENGINE": str(tmp_path / "dla" / version / "model.engine"),
               "TRTEXEC_ARGS": str(args)}
        run = subprocess.run(["bash", "build_engine.sh", "int8", "--dla-core", "0", "--gpu-fallback"],
                             cwd=static_batch_bundle, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        given = args.read_text().splitlines()
        assert "--useDLACore=0" in given and any(a.startswith("--calib=") for a in given), given
    # and the stand-in does refuse what the old build_engine.sh wrote
    old = [f"--onnx={static_batch_bundle / 'model.onnx'}", f"--saveEngine={tmp_path / 'x.engine'}",
           *(s.replace("32x", "1x").replace("8x", "1x") for s in SHAPES)]
    run = subprocess.run([str(stub / "trtexec"), *old], capture_output=True, text=True,
                         env={**os.environ, "TRT_VERSION": "10.3.0", "TRTEXEC_ARGS": str(tmp_path / "a")})
    assert run.returncode == 1 and "Static model does not take explicit shapes" in run.stderr
