"""trtexec's own option checks and build-time refusals, for the options this tool passes, ported
from NVIDIA/TensorRT's samples (samples/trtexec/trtexec.cpp, samples/common/sampleOptions.cpp,
samples/common/sampleEngines.cpp) with the file and line per release branch.

`check(release, argv, static_model)` returns what that release's trtexec would say, one
Finding per rule broken: an "error" ends trtexec before a build; a "degrade" is a warning after
which trtexec silently builds something other than what was asked. Both fail our tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SURFACE = Path(__file__).resolve().parents[1] / "tensorrt_api_surface"
RELEASES = ("8.5.3", "8.6.1", "10.3.0", "10.16.0", "11.1.0")
SHAPE_OPTIONS = ("--minShapes", "--optShapes", "--maxShapes")
PRECISION_OPTIONS = ("--fp16", "--int8", "--bf16", "--fp8", "--int4", "--best")


@dataclass(frozen=True)
class Finding:
    rule: str
    kind: str  # "error" or "degrade"
    message: str  # trtexec's own words
    source: str  # where in NVIDIA's source, for this release


def _branch(release: str) -> str:
    major, minor = release.split(".")[:2]
    return f"release/{major}.{minor}"


# rule -> release -> file:line in that release branch
SOURCES = {
    "unknown-option": {
        "8.5.3": "samples/trtexec/trtexec.cpp:150", "8.6.1": "samples/trtexec/trtexec.cpp:311",
        "10.3.0": "samples/trtexec/trtexec.cpp:242", "10.16.0": "samples/trtexec/trtexec.cpp:257",
        "11.1.0": "samples/trtexec/trtexec.cpp:378"},
    "static-model-shapes": {
        "8.5.3": "samples/common/sampleEngines.cpp:766", "8.6.1": "samples/common/sampleEngines.cpp:871",
        "10.3.0": "samples/common/sampleEngines.cpp:841", "10.16.0": "samples/common/sampleEngines.cpp:922",
        "11.1.0": "samples/common/sampleEngines.cpp:560"},
    "strongly-typed-precision": {
        "10.3.0": "samples/common/sampleOptions.cpp:1238", "10.16.0": "samples/common/sampleOptions.cpp:1300"},
    "build-only-deprecated": {"8.6.1": "samples/common/sampleOptions.cpp:973"},
    # the calibrator is set only under `else if (build.int8)`
    "calib-without-int8": {
        "8.5.3": "samples/common/sampleEngines.cpp:876", "8.6.1": "samples/common/sampleEngines.cpp:1015",
        "10.3.0": "samples/common/sampleEngines.cpp:1001", "10.16.0": "samples/common/sampleEngines.cpp:1108"},
    # int8 on a network without Q/DQ and without --calib: setTensorDynamicRange gives every
    # tensor a made-up range
    "int8-without-scales": {
        "8.5.3": "samples/common/sampleEngines.cpp:870", "8.6.1": "samples/common/sampleEngines.cpp:1009",
        "10.3.0": "samples/common/sampleEngines.cpp:995", "10.16.0": "samples/common/sampleEngines.cpp:1102"},
}


def parsed_options(release: str) -> set[str]:
    """Every option the release's sampleOptions.cpp parses (from the API surface file)."""
    return set(json.loads((SURFACE / f"tensorrt-{release}.json").read_text())["trtexec_flags"])


def _cite(rule: str, release: str) -> str:
    return f"NVIDIA/TensorRT {_branch(release)} {SOURCES[rule][release]}"


def check(release: str, argv: list[str], *, static_model: bool, qdq: bool) -> list[Finding]:
    """What `release`'s trtexec says about `argv` (argv[0] is the program) for an ONNX model
    whose input shapes are all static (`static_model`) or not, with Q/DQ nodes (`qdq`) or not."""
    names = [a.split("=", 1)[0] for a in argv[1:]]
    known = parsed_options(release)
    found = []
    unknown = [n for n in names if n not in known]
    if unknown:
        found.append(Finding("unknown-option", "error", f"Unknown option: {unknown[0]}",
                             _cite("unknown-option", release)))
    if static_model and any(n in SHAPE_OPTIONS for n in names):
        found.append(Finding(
            "static-model-shapes", "error",
            "Static model does not take explicit shapes since the shape of inference tensors "
            "will be determined by the model itself", _cite("static-model-shapes", release)))
    if "--stronglyTyped" in names and release in SOURCES["strongly-typed-precision"]:
        for flag in (n for n in names if n in PRECISION_OPTIONS and n != "--best"):
            mode = flag.removeprefix("--")
            found.append(Finding(
                "strongly-typed-precision", "degrade",
                f"Invalid usage, setting {mode} mode is not allowed if graph is strongly typed. "
                f"Disabling BuilderFlag::k{mode.upper()}.", _cite("strongly-typed-precision", release)))
    if "--buildOnly" in names and release in SOURCES["build-only-deprecated"]:
        found.append(Finding("build-only-deprecated", "degrade",
                             "--buildOnly flag has been deprecated by --skipInference flag.",
                             _cite("build-only-deprecated", release)))
    if "--calib" in names and "--int8" not in names and release in SOURCES["calib-without-int8"]:
        found.append(Finding("calib-without-int8", "degrade", "--calib is ignored without --int8",
                             _cite("calib-without-int8", release)))
    if ("--int8" in names and not qdq and "--calib" not in names
            and release in SOURCES["int8-without-scales"]):
        found.append(Finding("int8-without-scales", "degrade",
                             "int8 without Q/DQ or --calib: every tensor gets a default dynamic range",
                             _cite("int8-without-scales", release)))
    return found
