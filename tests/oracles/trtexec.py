"""trtexec's own option checks and build-time refusals, for the options this tool passes, ported
from NVIDIA/TensorRT's samples (samples/trtexec/trtexec.cpp, samples/common/sampleOptions.cpp,
samples/common/sampleEngines.cpp) with the file and line per release branch.

`check(release, argv, static_model)` returns what that release's trtexec would say, one
Finding per rule broken: an "error" ends trtexec before a build; a "degrade" is a warning after
which trtexec silently builds something other than what was asked. Both fail our tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SURFACE = Path(__file__).resolve().parents[1] / "tensorrt_api_surface"
RELEASES = ("8.5.3", "8.6.1", "10.3.0", "10.13.3", "10.16.0", "11.1.0")
# 10.13 (what the x86 and Triton targets build with) has no API surface file of its own: its
# trtexec options come from release/10.13's sampleOptions.cpp, extracted as the surface files'
FLAGS_10_13 = Path(__file__).resolve().parent / "trtexec-flags-10.13.3.json"
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
        "10.3.0": "samples/trtexec/trtexec.cpp:242", "10.13.3": "samples/trtexec/trtexec.cpp:223",
        "10.16.0": "samples/trtexec/trtexec.cpp:257", "11.1.0": "samples/trtexec/trtexec.cpp:378"},
    "static-model-shapes": {
        "8.5.3": "samples/common/sampleEngines.cpp:766", "8.6.1": "samples/common/sampleEngines.cpp:871",
        "10.3.0": "samples/common/sampleEngines.cpp:841", "10.13.3": "samples/common/sampleEngines.cpp:865",
        "10.16.0": "samples/common/sampleEngines.cpp:922", "11.1.0": "samples/common/sampleEngines.cpp:560"},
    # a shape option naming a tensor the network has no input of
    "shape-name-missing": {
        "8.5.3": "samples/common/sampleEngines.cpp:632", "8.6.1": "samples/common/sampleEngines.cpp:736",
        "10.3.0": "samples/common/sampleEngines.cpp:715", "10.13.3": "samples/common/sampleEngines.cpp:739",
        "10.16.0": "samples/common/sampleEngines.cpp:782", "11.1.0": "samples/common/sampleEngines.cpp:435"},
    "strongly-typed-precision": {
        "10.3.0": "samples/common/sampleOptions.cpp:1238", "10.13.3": "samples/common/sampleOptions.cpp:1276",
        "10.16.0": "samples/common/sampleOptions.cpp:1300"},
    # from 10.13 --best with --stronglyTyped is refused outright (before: --best was dropped)
    "best-strongly-typed": {
        "10.13.3": "samples/common/sampleOptions.cpp:1261", "10.16.0": "samples/common/sampleOptions.cpp:1285"},
    "dla-standalone-fallback": {
        "8.6.1": "samples/common/sampleOptions.cpp:1477", "10.3.0": "samples/common/sampleOptions.cpp:1804",
        "10.13.3": "samples/common/sampleOptions.cpp:1900", "10.16.0": "samples/common/sampleOptions.cpp:1947",
        "11.1.0": "samples/common/sampleOptions.cpp:1995"},
    # an option value the parser cannot read (std::stoi, std::stod, a unit, a pool name, a
    # negative pool) throws std::invalid_argument, which trtexec reports and stops on
    "invalid-value": {
        "8.5.3": "samples/trtexec/trtexec.cpp:155", "8.6.1": "samples/trtexec/trtexec.cpp:316",
        "10.3.0": "samples/trtexec/trtexec.cpp:247", "10.13.3": "samples/trtexec/trtexec.cpp:228",
        "10.16.0": "samples/trtexec/trtexec.cpp:262", "11.1.0": "samples/trtexec/trtexec.cpp:383"},
    "build-only-deprecated": {"8.6.1": "samples/common/sampleOptions.cpp:973"},
    # the calibrator is set only under `else if (build.int8)`
    "calib-without-int8": {
        "8.5.3": "samples/common/sampleEngines.cpp:876", "8.6.1": "samples/common/sampleEngines.cpp:1015",
        "10.3.0": "samples/common/sampleEngines.cpp:1001", "10.13.3": "samples/common/sampleEngines.cpp:1036",
        "10.16.0": "samples/common/sampleEngines.cpp:1108"},
    # int8 on a network without Q/DQ and without --calib: setTensorDynamicRange gives every
    # tensor a made-up range
    "int8-without-scales": {
        "8.5.3": "samples/common/sampleEngines.cpp:870", "8.6.1": "samples/common/sampleEngines.cpp:1009",
        "10.3.0": "samples/common/sampleEngines.cpp:995", "10.13.3": "samples/common/sampleEngines.cpp:1030",
        "10.16.0": "samples/common/sampleEngines.cpp:1102"},
}
# --memPoolSize's pools (sampleOptions.cpp: memPoolName == ...); tacticSharedMem from 10.x
POOLS = ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM")
POOLS_10 = (*POOLS, "tacticSharedMem")
UNITS = "BKMG"  # kUNIT_MULTIPLIERS (10.x); 8.x reads a plain number of MiB


def parsed_options(release: str) -> set[str]:
    """Every option the release's sampleOptions.cpp parses (from the API surface file)."""
    path = FLAGS_10_13 if release == "10.13.3" else SURFACE / f"tensorrt-{release}.json"
    return set(json.loads(path.read_text())["trtexec_flags"])


_STOI = re.compile(r"\s*[+-]?\d")  # std::stoi reads a number from the front, or throws
_STOD = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _value_problem(release: str, name: str, value: str) -> str | None:
    """What std::stoi/std::stod and trtexec's own checks say of one option's value, or None."""
    ten = not release.startswith("8.")
    if name == "--useDLACore" and not _STOI.match(value):
        return "stoi"
    if name in ("--minShapes", "--optShapes", "--maxShapes"):
        for item in value.split(","):
            dims = item.rpartition(":")[2]
            if not item.count(":") or (dims != "scalar" and not all(_STOI.match(d) for d in dims.split("x"))):
                return "stoi"
    if name == "--memPoolSize":
        for spec in value.split(","):
            pool, _, size = spec.rpartition(":")
            number = _STOD.match(size)
            unit = size[number.end():] if number else ""
            if not number or (unit and (not ten or unit.upper() not in UNITS)):
                return (f"{spec} conversion failure: failed to parse --memPoolSize. Please double check "
                        "your input string.")
            if float(number.group(0)) < 0:
                return f"Negative memory pool size: {float(number.group(0)):f}"
            if pool and pool not in (POOLS_10 if ten else POOLS):
                return f"Unknown memory pool: {pool}"
    return None


def _cite(rule: str, release: str) -> str:
    return f"NVIDIA/TensorRT {_branch(release)} {SOURCES[rule][release]}"


def check(release: str, argv: list[str], *, static_model: bool, qdq: bool,
          inputs: tuple[str, ...] = ("input",)) -> list[Finding]:
    """What `release`'s trtexec says about `argv` (argv[0] is the program) for an ONNX model
    whose input shapes are all static (`static_model`) or not, with Q/DQ nodes (`qdq`) or not,
    whose inputs are named `inputs`."""
    names = [a.split("=", 1)[0] for a in argv[1:]]
    values = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    known = parsed_options(release)
    found = []
    for name, value in values.items():
        problem = _value_problem(release, name, value)
        if problem:
            found.append(Finding("invalid-value", "error", problem, _cite("invalid-value", release)))
    for name in SHAPE_OPTIONS:
        for item in values.get(name, "").split(","):
            tensor = item.rpartition(":")[0].strip("'")
            if item and tensor not in inputs and not static_model:
                found.append(Finding(
                    "shape-name-missing", "error", f'Cannot find input tensor with name "{tensor}" in the '
                    "network inputs! Please make sure the input tensor names are correct.",
                    _cite("shape-name-missing", release)))
    if "--best" in names and "--stronglyTyped" in names and release in SOURCES["best-strongly-typed"]:
        found.append(Finding("best-strongly-typed", "error",
                             "--best and --stronglyTyped cannot be both set. --best enables implicit "
                             "precisions, while --stronglyTyped enforces explicit precisions.",
                             _cite("best-strongly-typed", release)))
    if ("--buildDLAStandalone" in names and "--allowGPUFallback" in names
            and release in SOURCES["dla-standalone-fallback"]):
        found.append(Finding("dla-standalone-fallback", "error",
                             "GPU fallback (--allowGPUFallback) not allowed for DLA standalone mode",
                             _cite("dla-standalone-fallback", release)))
    unknown = [n for n in names if n not in known]
    if unknown:
        found.append(Finding("unknown-option", "error", f"Unknown option: {unknown[0]}",
                             _cite("unknown-option", release)))
    if static_model and any(n in SHAPE_OPTIONS for n in names):
        found.append(Finding(
            "static-model-shapes", "error",
            "Static model does not take explicit shapes since the shape of inference tensors "
            "will be determined by the model itself", _cite("static-model-shapes", release)))
    if ("--stronglyTyped" in names and release in SOURCES["strongly-typed-precision"]
            and not ("--best" in names and release in SOURCES["best-strongly-typed"])):
        # --best sets fp16 and int8 before the typed check disables them
        implied = ["--fp16", "--int8"] if "--best" in names else []
        for flag in dict.fromkeys(n for n in [*names, *implied] if n in PRECISION_OPTIONS and n != "--best"):
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
