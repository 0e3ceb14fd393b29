"""The build plan: which ONNX file and which flags one (TensorRT version, precision) needs, for
TensorRT's Python builder and for trtexec, in one pure function. Held to trtexec's own option
checks by tests/test_trtexec_oracle.py; numpy-free, carried in a bundle's lib/.
"""

from __future__ import annotations

from dataclasses import dataclass

try:  # inside the resnet_edge package
    from .trt_rules import DLA_VERSIONS, INT8_FP16_FILE, ONNX_FILES, version_tuple
except ImportError:  # flat in a bundle's lib/
    from trt_rules import DLA_VERSIONS, INT8_FP16_FILE, ONNX_FILES, version_tuple  # type: ignore[no-redef]


# tf32 is fp32's model with TensorRT's TF32 flag left on (its default): a math mode, not a file
MODEL_OF = {"tf32": "fp32"}


@dataclass(frozen=True)
class BuildPlan:
    """Which ONNX file and which flags one (TensorRT version, precision) needs."""

    tensorrt: str
    precision: str
    onnx_file: str
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names to set
    cleared_flags: tuple[str, ...]  # BuilderFlag names to clear (TF32 is on by default)
    strongly_typed: bool
    calibration_cache: bool  # implicit INT8: scales from calibration.cache (TensorRT <= 10)
    static_batch: bool  # one batch size (min = opt = max): DLA
    version_compatible: bool
    hardware_compatible: bool
    trtexec_flags: tuple[str, ...]


def build_plan(tensorrt_version: str, precision: str, *, int8_source: str = "auto",
               typing: str = "auto", dla: bool = False, version_compatible: bool = False,
               hardware_compatible: bool = False, int8_float: str = "auto") -> BuildPlan:
    """The one place that knows the three API families (shared/DESIGN.md):

    - 8.5/8.6: the ONNX parser needs EXPLICIT_BATCH; precision from FP16/INT8 builder flags;
      INT8 from the Q/DQ model or, implicitly, from calibration.cache;
    - 10.x: EXPLICIT_BATCH is gone (ignored); weak typing (flags) by default before 10.12,
      strong typing from 10.12 on, where the flags are deprecated; DLA keeps the flags;
    - 11.x: strongly typed only: fp16 from model.fp16.onnx, int8 from a Q/DQ model, no
      precision flags, no calibrators.

    Strongly typed int8 takes its float precision from the file too, so it builds from
    model.int8-fp16.onnx (float parts in fp16) unless `int8_float="fp32"`. fp32 engines clear
    TF32, which TensorRT enables by default on Ampere and newer; tf32 engines keep it, named. DLA engines (8.5-10.7) have one
    batch size and take int8 from the calibration cache unless `int8_source="qdq"`.
    """
    if precision not in (*ONNX_FILES, "tf32"):
        raise ValueError(f"unknown precision {precision!r}; use fp32, tf32, fp16, int8")
    if int8_source not in ("auto", "qdq", "cache"):
        raise ValueError(f"unknown int8 source {int8_source!r}; use auto, qdq or cache")
    if typing not in ("auto", "weak", "strong"):
        raise ValueError(f"unknown typing {typing!r}; use auto, weak or strong")
    if int8_float not in ("auto", "fp16", "fp32"):
        raise ValueError(f"unknown int8 float precision {int8_float!r}; use auto, fp16 or fp32")
    version = version_tuple(tensorrt_version)
    if len(version) < 2 or version[0] not in (8, 10, 11) or (version[0] == 8 and version[:2] < (8, 5)):
        raise ValueError(f"TensorRT {tensorrt_version} is not supported; use 8.5/8.6, 10.x or 11.x")
    major = version[0]
    if (version_compatible or hardware_compatible) and version[:2] < (8, 6):
        which = "--version-compatible" if version_compatible else "--hardware-compatible"
        raise ValueError(f"{which} needs TensorRT 8.6 or newer; TensorRT {tensorrt_version} "
                         "builds engines for its own version and GPU only")
    if dla:
        if precision in ("fp32", "tf32"):
            raise ValueError(f"DLA runs fp16 and int8 only; build {precision} for the GPU")
        if not DLA_VERSIONS[0] <= version[:2] <= DLA_VERSIONS[1]:
            raise ValueError(f"TensorRT {tensorrt_version} has no DLA support this tool can use "
                             "(DLA builds need TensorRT 8.5-10.7: JetPack 5 or 6); drop --dla-core")
        if typing == "strong":
            raise ValueError("DLA builds here use builder precision flags; drop --typing strong")
    if int8_source == "auto":
        int8_source = "cache" if dla and precision == "int8" else "qdq"
    cache = precision == "int8" and int8_source == "cache"
    if major == 11:
        if typing == "weak" or cache:
            raise ValueError("TensorRT 11 is strongly typed only: no precision flags and no "
                             "calibration cache; int8 comes from the Q/DQ model")
        strong = True
    elif major == 8:
        if typing == "strong":
            raise ValueError("TensorRT 8.x has no strongly typed networks; use --typing weak")
        strong = False
    else:
        strong = typing == "strong" or (typing == "auto" and version[:2] >= (10, 12) and not dla)
        if strong and cache:
            raise ValueError("a strongly typed build takes int8 from the Q/DQ model, not from "
                             "calibration.cache; use --typing weak for the cache")
    cleared = ("TF32",) if precision == "fp32" else ()
    common = ((("--noTF32",) if cleared else ())
              + (("--versionCompatible",) if version_compatible else ())
              + (("--hardwareCompatibilityLevel=ampere+",) if hardware_compatible else ())
              # build only: trtexec otherwise benchmarks every engine it builds
              + (("--skipInference",) if version[:2] >= (8, 6) else ("--buildOnly",)))
    if strong:
        onnx_file = ONNX_FILES[MODEL_OF.get(precision, precision)]
        if precision == "int8" and int8_float != "fp32":
            onnx_file = INT8_FP16_FILE
        network = ("STRONGLY_TYPED",) if major == 10 else ()  # 11.x: always on, flag ignored
        trtexec = (("--stronglyTyped",) if major == 10 else ()) + common
        return BuildPlan(tensorrt_version, precision, onnx_file, network, (), cleared, True,
                         False, False, version_compatible, hardware_compatible, trtexec)
    network = ("EXPLICIT_BATCH",) if major == 8 else ()
    flags = {"fp32": (), "tf32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
    onnx_file = ONNX_FILES["int8"] if precision == "int8" and not cache else ONNX_FILES["fp32"]
    trtexec = tuple(f"--{f.lower()}" for f in flags) + common
    return BuildPlan(tensorrt_version, precision, onnx_file, network, flags, cleared, False,
                     cache, dla, version_compatible, hardware_compatible, trtexec)


def batch_profile(plan: BuildPlan, max_batch: int, opt_batch: int,
                  min_batch: int = 1) -> tuple[int, int, int]:
    """(min, opt, max) batch: the model's min..max tuned for opt, or opt alone where shapes
    must be static (DLA)."""
    opt = max(min_batch, min(opt_batch, max_batch))
    return (opt, opt, opt) if plan.static_batch else (min_batch, opt, max_batch)


def trtexec_command(plan: BuildPlan, *, engine: str, input_name: str, input_shape,
                    profile: tuple[int, int, int], workspace_mib: int, static_model: bool,
                    timing_cache: str | None = None, calibration_cache: str | None = None,
                    dla_core: int | None = None, gpu_fallback: bool = False) -> list[str]:
    """The trtexec line for the same plan, as build_engine.sh runs it on a device.

    A model exported with a static batch gets no shape options: every trtexec from 8.5 on
    refuses them ("Static model does not take explicit shapes", sampleEngines.cpp)."""
    dims = "x".join(str(d) for d in input_shape)
    low, opt, high = profile
    shapes = [] if static_model else [
        f"--minShapes={input_name}:{low}x{dims}", f"--optShapes={input_name}:{opt}x{dims}",
        f"--maxShapes={input_name}:{high}x{dims}"]
    args = ["trtexec", f"--onnx={plan.onnx_file}", f"--saveEngine={engine}", *shapes,
            f"--memPoolSize=workspace:{workspace_mib}", *plan.trtexec_flags]
    if plan.calibration_cache:
        if not calibration_cache:
            raise ValueError("this plan reads calibration.cache: pass the copy headed for this TensorRT")
        args.append(f"--calib={calibration_cache}")
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if dla_core is not None:
        args.append(f"--useDLACore={dla_core}")
        if gpu_fallback:
            args.append("--allowGPUFallback")
    return args
