"""Building TensorRT engines with the Python builder (NVIDIA's samples/python
introductory_parser_samples and common.py), their JSON records, and the command line a bundle's
build_engine.sh and verify.py use (check, plan, build, record). The decisions live in
trt_rules.py and trt_plan.py, running an engine in trt_runner.py; free of torch on purpose: the
deploy bundle carries these four files in lib/ so a Jetson runs them with JetPack's Python,
numpy, TensorRT and cuda-python only.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

try:  # inside the resnet_edge package
    from .trt_plan import BuildPlan, batch_profile, build_plan, trtexec_command
    from .trt_rules import (CACHE_FILE, ENGINE_JSON_SUFFIX, ONNX_FILES, TIMING_CACHE_FILE, EngineError, bundle_info,
                            device_dir, engine_dir, engine_name, engine_path, family_note, incompatibility,
                            opset_problem, read_engine_meta, reheader_cache, version_tuple)
    from .trt_runner import cuda_python_version, current_gpu, import_cudart, import_trt
except ImportError:  # flat in a bundle's lib/, or run as lib/trt_engine.py
    sys.dont_write_bytecode = True  # no lib/__pycache__ in the bundle, whose manifest lists every file
    from trt_plan import BuildPlan, batch_profile, build_plan, trtexec_command  # type: ignore[no-redef]
    from trt_rules import (CACHE_FILE, ENGINE_JSON_SUFFIX, ONNX_FILES, TIMING_CACHE_FILE, EngineError,  # type: ignore[no-redef]
                           bundle_info, device_dir, engine_dir, engine_name, engine_path, family_note,
                           incompatibility, opset_problem, read_engine_meta, reheader_cache,
                           version_tuple)
    from trt_runner import cuda_python_version, current_gpu, import_cudart, import_trt  # type: ignore[no-redef]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _use_timing_cache(config, path: Path | None, warn) -> None:
    """Load `path` into the builder (NVIDIA's common.py setup_timing_cache), but refuse a cache
    another GPU or TensorRT wrote (set_timing_cache returns False) and start a fresh one."""
    blob = path.read_bytes() if path is not None and path.exists() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if blob:
        warn(f"timing cache {path} was written by another GPU or TensorRT version; "
             "starting a fresh one")
    config.set_timing_cache(config.create_timing_cache(b""), False)


def build_engine(model_dir: str | os.PathLike, precision: str, *, out_dir: str | os.PathLike | None = None,
                 max_batch: int = 32, opt_batch: int = 8, min_batch: int = 1,
                 workspace_mib: int = 2048,
                 timing_cache: str | os.PathLike | None = "auto", dla_core: int | None = None,
                 gpu_fallback: bool = False, version_compatible: bool = False,
                 hardware_compatible: bool = False, int8_source: str = "auto",
                 typing: str = "auto", int8_float: str = "auto", cuda_python: str | None = None,
                 mark_outputs: list[str] | None = None, warn=_warn) -> Path:
    """Parse the plan's ONNX file, build, write <engine> and its JSON record; return the path.

    `out_dir` defaults to engines/<gpu>-trt<version>/ under `model_dir`; the timing cache
    ("auto") lives there too, so it is keyed by GPU and TensorRT version. `mark_outputs` makes a
    debug engine: those tensors become outputs too (as Polygraphy marks them), which keeps
    TensorRT from fusing them away. ValueError for usage
    this TensorRT or GPU cannot honour; EngineError when the build itself fails. Follows NVIDIA's
    samples/python/introductory_parser_samples and common.py.
    """
    trt = import_trt()
    gpu, capability = current_gpu(import_cudart(cuda_python))
    plan = build_plan(trt.__version__, precision, int8_source=int8_source, typing=typing,
                      dla=dla_core is not None, version_compatible=version_compatible,
                      hardware_compatible=hardware_compatible, int8_float=int8_float)
    if hardware_compatible and version_tuple(capability) < (8, 0):
        raise ValueError(f"--hardware-compatible needs an Ampere or newer GPU (compute capability "
                         f">= 8.0); {gpu} is {capability}")
    model_dir = Path(model_dir)
    onnx_path = model_dir / plan.onnx_file
    if not onnx_path.exists():
        raise EngineError(f"{onnx_path} not found; TensorRT {trt.__version__} {precision} builds "
                          f"from {plan.onnx_file} (made by resnet-edge "
                          f"{'calibrate' if 'int8' in plan.onnx_file else 'export'})")
    target_dir = Path(out_dir) if out_dir else engine_dir(model_dir, gpu, trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if dla_core is not None and not 0 <= dla_core < builder.num_DLA_cores:
        raise ValueError(f"{gpu} has {builder.num_DLA_cores} DLA cores, so --dla-core {dla_core} "
                         "does not exist" + ("" if builder.num_DLA_cores else
                                             " (DLA is on Jetson Xavier and Orin)"))
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    output_name = network.get_output(0).name
    if mark_outputs:
        wanted = set(mark_outputs)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            for j in range(layer.num_outputs):
                tensor = layer.get_output(j)
                if tensor.name in wanted and tensor.name != output_name:
                    network.mark_output(tensor)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    inp = network.get_input(0)
    chw = tuple(inp.shape)[1:]
    low, opt, high = batch_profile(plan, max_batch, opt_batch, min_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (low, *chw), (opt, *chw), (high, *chw))
    config.add_optimization_profile(profile)
    cache_path = target_dir / TIMING_CACHE_FILE if timing_cache == "auto" else (
        Path(timing_cache) if timing_cache else None)
    _use_timing_cache(config, cache_path, warn)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    calibration_header = None
    if plan.calibration_cache:
        cache = reheader_cache((model_dir / CACHE_FILE).read_text(), trt.__version__)
        calibration_header = cache.partition("\n")[0]
        config.int8_calibrator = _cache_calibrator(trt, cache.encode())
        config.set_calibration_profile(profile)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        if gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT engine build failed (see the TensorRT log above)")
    seconds = time.perf_counter() - start
    engine = target_dir / engine_name(precision, dla_core)
    _atomic_write(engine, bytes(serialized))
    if cache_path is not None:  # after the engine: a cache that cannot be saved costs no engine
        built_cache = config.get_timing_cache()
        try:
            if built_cache is not None:
                _atomic_write(cache_path, bytes(built_cache.serialize()))
        except (OSError, RuntimeError) as exc:
            warn(f"timing cache not saved to {cache_path} ({exc}); the engine is fine")
    write_engine_meta(engine, plan, onnx_path, gpu=gpu, capability=capability, builder="python",
                      input_name=inp.name, input_shape=list(chw), output_name=output_name,
                      marked_outputs=len(mark_outputs or []),
                      profile={"min": low, "opt": opt, "max": high},
                      workspace_mib=workspace_mib, dla_core=dla_core, gpu_fallback=gpu_fallback,
                      version_compatible=version_compatible,
                      hardware_compatibility="ampere_plus" if hardware_compatible else "none",
                      tf32=not plan.cleared_flags, calibration_header=calibration_header,
                      timing_cache=str(cache_path) if cache_path else None,
                      build_seconds=round(seconds, 2))
    return engine


def write_engine_meta(engine: Path, plan: BuildPlan, onnx_path: Path, *, gpu: str, capability: str,
                      **details) -> None:
    """The JSON beside an engine that says what it was built for (checked before loading).
    Written last: an engine without one is never loaded."""
    meta = {"tensorrt": plan.tensorrt, "gpu": gpu, "compute_capability": capability,
            "precision": plan.precision, "onnx": plan.onnx_file,
            "onnx_sha256": hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest(),
            "plan": asdict(plan), "version_compatible": False, "hardware_compatibility": "none",
            **details, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic_write(Path(engine).with_suffix(ENGINE_JSON_SUFFIX),
                  (json.dumps(meta, indent=2) + "\n").encode())


def reuse_problem(engine: Path, bundle: Path, trt_version: str, gpu: str, capability: str) -> str | None:
    """Why `engine` cannot be kept for this bundle on this device, or None when its record says it
    was built here (this TensorRT and GPU) from the bundle's very ONNX file: a re-deploy of the
    same bundle builds nothing."""
    if not engine.exists():
        return f"no engine at {engine}"
    try:
        meta = read_engine_meta(engine)
    except EngineError as exc:
        return str(exc)
    onnx = Path(bundle) / str(meta.get("onnx"))
    if not onnx.is_file() or hashlib.sha256(onnx.read_bytes()).hexdigest() != meta.get("onnx_sha256"):
        return f"{engine.name} was built from another {meta.get('onnx')}"
    return incompatibility(meta, trt_version, gpu, capability)


def _cache_calibrator(trt, cache: bytes):
    """A calibrator that only serves an existing cache (TensorRT <= 10): TensorRT reads every
    scale from it and never asks for a batch."""

    class CacheOnlyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()  # the base __init__ is mandatory

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data):
            return None

    return CacheOnlyCalibrator()


def main(argv=None) -> int:
    import argparse
    import shlex

    parser = argparse.ArgumentParser(
        prog="trt_engine.py", description="Check, plan, build or record a TensorRT engine for a "
        "resnet-edge bundle. `plan` writes the calibration cache copy headed for this TensorRT "
        "beside the engine and prints the trtexec line.")
    parser.add_argument("command", choices=["check", "plan", "build", "record", "reusable"])
    parser.add_argument("precision", nargs="?", default="fp16", choices=[*ONNX_FILES, "tf32"])
    parser.add_argument("--bundle", type=Path, default=Path("."))
    parser.add_argument("--device-dir", type=Path, help="[<bundle>.device, or $RESNET_EDGE_DEVICE_DIR]")
    parser.add_argument("--tensorrt-version", help="[the installed TensorRT]")
    parser.add_argument("--engine", help="[<device dir>/engines/<gpu>-trt<version>/model.<precision>"
                                         "[.dla<N>].engine]")
    parser.add_argument("--gpu", help="GPU name for the engine path when no GPU can be queried")
    parser.add_argument("--max-batch", type=int)
    parser.add_argument("--opt-batch", type=int)
    parser.add_argument("--workspace", type=int, default=2048, help="MiB")
    parser.add_argument("--timing-cache", help="[timing.cache beside the engine]")
    parser.add_argument("--dla-core", type=int)
    parser.add_argument("--gpu-fallback", action="store_true")
    parser.add_argument("--int8-source", choices=["auto", "qdq", "cache"], default="auto")
    parser.add_argument("--typing", choices=["auto", "weak", "strong"], default="auto")
    parser.add_argument("--int8-float", choices=["auto", "fp16", "fp32"], default="auto")
    parser.add_argument("--shell", action="store_true", help="plan: one shell-quoted line")
    args = parser.parse_args(argv)
    info = bundle_info(args.bundle)
    max_batch = args.max_batch or info.get("max_batch", 32)
    opt_batch = args.opt_batch or min(info.get("opt_batch", 8), max_batch)
    min_batch = info.get("min_batch", 1)
    devices = args.device_dir or device_dir(args.bundle)
    cuda_python = info.get("cuda_python")
    try:
        if args.dla_core is not None and str(info.get("target", "")).startswith("x86"):
            raise ValueError(f"this bundle targets {info['target']}: x86 GPUs have no DLA; "
                             "drop --dla-core")
        if args.command == "check":
            trt = import_trt()
            cudart = import_cudart(cuda_python)
            gpu, capability = current_gpu(cudart)
            # no family note here: plan or build, which follow, say it once
            print(f"TensorRT {trt.__version__}, cuda-python {cuda_python_version()}, "
                  f"{gpu} (compute capability {capability})")
            return 0
        if args.command == "reusable":  # exit 0 (and its path) for an engine to keep as it is
            trt = import_trt()
            gpu, capability = current_gpu(import_cudart(cuda_python))
            engine = Path(args.engine) if args.engine else engine_path(devices, gpu, trt.__version__,
                                                                         args.precision, args.dla_core)
            why = reuse_problem(engine, args.bundle, trt.__version__, gpu, capability)
            print(engine if why is None else why)
            return 0 if why is None else 1
        version = args.tensorrt_version or import_trt().__version__
        if args.command != "record":
            note = family_note(info.get("tensorrt"), version)
            if note:
                print(note, file=sys.stderr)
        options = dict(int8_source=args.int8_source, typing=args.typing, int8_float=args.int8_float)
        if args.command in ("plan", "build"):  # before any work: can this parser read it?
            plan = build_plan(version, args.precision, dla=args.dla_core is not None, **options)
            problem = opset_problem(plan.onnx_file, (info.get("opsets") or {}).get(plan.onnx_file),
                                    version)
            if problem:
                raise ValueError(problem)
        if args.command == "build":
            engine = build_engine(args.bundle, args.precision, max_batch=max_batch, opt_batch=opt_batch,
                                  min_batch=min_batch, workspace_mib=args.workspace,
                                  timing_cache=args.timing_cache or "auto",
                                  dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
                                  cuda_python=cuda_python,
                                  out_dir=(Path(args.engine).parent if args.engine else
                                           engine_dir(devices, current_gpu(import_cudart(cuda_python))[0],
                                                      import_trt().__version__)),
                                  **options)
            print(engine)
            return 0
        plan = build_plan(version, args.precision, dla=args.dla_core is not None, **options)
        engine = Path(args.engine) if args.engine else engine_path(
            devices, args.gpu or current_gpu(import_cudart(cuda_python))[0], version, args.precision,
            args.dla_core)
        profile = batch_profile(plan, max_batch, opt_batch, min_batch)
        if args.command == "record":  # after trtexec built args.engine on this device
            gpu, capability = current_gpu(import_cudart(cuda_python))
            write_engine_meta(engine, plan, args.bundle / plan.onnx_file, gpu=gpu,
                              capability=capability, builder="trtexec",
                              input_name=info.get("input_name", "input"),
                              input_shape=info.get("input_shape"),
                              profile=dict(zip(("min", "opt", "max"), profile)),
                              dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
                              tf32=not plan.cleared_flags)
            return 0
        engine.parent.mkdir(parents=True, exist_ok=True)
        calibration = None
        if plan.calibration_cache:
            source = args.bundle / CACHE_FILE
            if not source.exists():
                raise EngineError(f"{source} is missing: this bundle carries no calibration cache")
            calibration = engine.parent / CACHE_FILE
            _atomic_write(calibration, reheader_cache(source.read_text(), version).encode())
        line = trtexec_command(plan, engine=str(engine), input_name=info.get("input_name", "input"),
                               input_shape=info.get("input_shape", (3, 224, 224)), profile=profile,
                               workspace_mib=args.workspace,
                               static_model=bool(info.get("static_batch", False)),
                               timing_cache=args.timing_cache or str(engine.parent / TIMING_CACHE_FILE),
                               calibration_cache=str(calibration) if calibration else None,
                               dla_core=args.dla_core, gpu_fallback=args.gpu_fallback)
        print(shlex.join(line) if args.shell else "\n".join(line))
        return 0
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, EngineError) else 2


if __name__ == "__main__":
    raise SystemExit(main())
