"""TensorRT engines: plan, build, load, check compatibility, run. Free of torch on purpose: the deploy bundle
copies this one file next to verify.py so a Jetson runs it with JetPack's Python, numpy,
TensorRT and cuda-python only (`pip install cuda-python`).

The API use follows NVIDIA's samples (samples/python/common_runtime.py) and the rules in
shared/reference/tensorrt-api.md: execute_async_v3 with tensor addresses on a non-default
stream; the enum *names*, never their values, because those changed across 8.x/10.x/11.x.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ENGINE_JSON_SUFFIX = ".json"


class EngineError(Exception):
    """An engine cannot be used here; the message says why and what to do."""


# ---- pure decisions, tested without TensorRT ----------------------------------------------

def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def gpu_slug(gpu_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def engine_dir(workdir: str | os.PathLike, gpu_name: str, trt_version: str) -> Path:
    major_minor = ".".join(str(p) for p in version_tuple(trt_version)[:2])
    return Path(workdir) / "engines" / f"{gpu_slug(gpu_name)}-trt{major_minor}"


def engine_path(workdir, gpu_name: str, trt_version: str, precision: str) -> Path:
    return engine_dir(workdir, gpu_name, trt_version) / f"model.{precision}.engine"


def incompatibility(meta: dict, trt_version: str, gpu_name: str, compute_capability: str) -> str | None:
    """Why an engine built as `meta` describes cannot run here, or None if it can.

    Engines are tied to the exact TensorRT version and the GPU's compute capability unless built
    version-compatible (same major onward 8->10->11 pairs excepted, which we do not rely on) or
    hardware-compatible (Ampere and newer).
    """
    built = meta.get("tensorrt", "?")
    if not meta.get("version_compatible") and version_tuple(built) != version_tuple(trt_version):
        return (f"engine was built with TensorRT {built}, this machine has {trt_version}; "
                "rebuild it here with `resnet-edge build`")
    if meta.get("version_compatible") and version_tuple(built)[:1] != version_tuple(trt_version)[:1]:
        return (f"version-compatible engine from TensorRT {built} cannot load on {trt_version}; "
                "rebuild it here with `resnet-edge build`")
    level = meta.get("hardware_compatibility", "none")
    cc_built = meta.get("compute_capability", "?")
    if level == "ampere_plus":
        if version_tuple(compute_capability) < (8, 0):
            return (f"engine is Ampere+ compatible but this GPU has compute capability "
                    f"{compute_capability}; rebuild it here with `resnet-edge build`")
    elif cc_built != compute_capability:
        return (f"engine was built for {meta.get('gpu', '?')} (compute capability {cc_built}), "
                f"this GPU is {gpu_name} ({compute_capability}); rebuild it here with "
                "`resnet-edge build`")
    return None


def read_engine_meta(engine: str | os.PathLike) -> dict:
    path = Path(engine).with_suffix(ENGINE_JSON_SUFFIX)
    if not path.exists():
        raise EngineError(f"{path.name} (the engine's build record) is missing; rebuild the engine")
    return json.loads(path.read_text())


ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
CACHE_FILE = "calibration.cache"


@dataclass(frozen=True)
class BuildPlan:
    """Which ONNX file and which flags one (TensorRT version, precision) needs."""

    tensorrt: str
    precision: str
    onnx_file: str
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names
    strongly_typed: bool
    calibration_cache: bool  # implicit INT8: scales from calibration.cache (TensorRT <= 10)
    trtexec_flags: tuple[str, ...]


def build_plan(tensorrt_version: str, precision: str, *, int8_source: str = "qdq",
               typing: str = "auto", dla: bool = False) -> BuildPlan:
    """The one place that knows the three API families (shared/DESIGN.md):

    - 8.5/8.6: the ONNX parser needs EXPLICIT_BATCH; precision from FP16/INT8 builder flags;
      INT8 from the Q/DQ model or, implicitly, from calibration.cache;
    - 10.x: EXPLICIT_BATCH is gone (ignored); weak typing (flags) by default before 10.12,
      strong typing from 10.12 on, where the flags are deprecated; DLA keeps the flags;
    - 11.x: strongly typed only: fp16 from model.fp16.onnx, int8 from model.int8.onnx, no
      precision flags, no calibrators.
    """
    if precision not in ONNX_FILES:
        raise ValueError(f"unknown precision {precision!r}; use fp32, fp16, int8")
    if int8_source not in ("qdq", "cache"):
        raise ValueError(f"unknown int8 source {int8_source!r}; use qdq or cache")
    if typing not in ("auto", "weak", "strong"):
        raise ValueError(f"unknown typing {typing!r}; use auto, weak or strong")
    version = version_tuple(tensorrt_version)
    major = version[0]
    if major not in (8, 10, 11) or (major == 8 and version[:2] < (8, 5)):
        raise ValueError(f"TensorRT {tensorrt_version} is not supported; use 8.5/8.6, 10.x or 11.x")
    if dla and precision == "fp32":
        raise ValueError("DLA runs fp16 and int8 only; build fp32 for the GPU")
    cache = precision == "int8" and int8_source == "cache"
    if major == 11:
        if typing == "weak" or cache:
            raise ValueError("TensorRT 11 is strongly typed only: no precision flags and no "
                             "calibration cache; int8 comes from the Q/DQ model.int8.onnx")
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
    if strong:
        network = ("STRONGLY_TYPED",) if major == 10 else ()  # 11.x: always on, flag ignored
        return BuildPlan(tensorrt_version, precision, ONNX_FILES[precision], network, (), True,
                         False, ("--stronglyTyped",) if major == 10 else ())
    network = ("EXPLICIT_BATCH",) if major == 8 else ()
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
    onnx_file = ONNX_FILES["int8"] if precision == "int8" and not cache else ONNX_FILES["fp32"]
    trtexec = tuple(f"--{f.lower()}" for f in flags) + ((f"--calib={CACHE_FILE}",) if cache else ())
    return BuildPlan(tensorrt_version, precision, onnx_file, network, flags, False, cache, trtexec)


def trtexec_command(plan: BuildPlan, *, engine: str, input_name: str, input_shape, max_batch: int,
                    opt_batch: int, workspace_mib: int, timing_cache: str | None = None,
                    dla_core: int | None = None, gpu_fallback: bool = False) -> list[str]:
    """The trtexec line for the same plan, as build_engine.sh runs it on a Jetson."""
    dims = "x".join(str(d) for d in input_shape)
    args = ["trtexec", f"--onnx={plan.onnx_file}", f"--saveEngine={engine}",
            f"--minShapes={input_name}:1x{dims}", f"--optShapes={input_name}:{opt_batch}x{dims}",
            f"--maxShapes={input_name}:{max_batch}x{dims}", f"--memPoolSize=workspace:{workspace_mib}",
            *plan.trtexec_flags]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    if dla_core is not None:
        args.append(f"--useDLACore={dla_core}")
        if gpu_fallback:
            args.append("--allowGPUFallback")
    return args


def cache_header(tensorrt_version: str, algorithm: str = "EntropyCalibration2") -> str:
    """`TRT-<NV_TENSORRT_VERSION>-<algorithm>`: 8.5.2 -> 8502, 10.3.0 -> 100300."""
    major, minor, patch = (list(version_tuple(tensorrt_version)) + [0, 0])[:3]
    code = major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch
    return f"TRT-{code}-{algorithm}"


def reheader_cache(text: str, tensorrt_version: str) -> str:
    """A calibration cache's first line names the TensorRT version that reads it."""
    _, _, body = text.partition("\n")
    return f"{cache_header(tensorrt_version)}\n{body}"


# ---- TensorRT and CUDA ------------------------------------------------------------------

def import_trt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError("TensorRT is not installed (pip install 'resnet-edge[tensorrt]' on x86; "
                          "JetPack ships it on Jetsons)") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise EngineError("cuda-python is not installed; pip install cuda-python") from None
    return cudart


def _check(result):
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"CUDA call failed: {cudart.cudaGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else values or None


def current_gpu() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of device 0."""
    cudart = import_cudart()
    try:
        props = _check(cudart.cudaGetDeviceProperties(0))
    except EngineError as exc:
        raise EngineError(f"no usable CUDA GPU ({exc})") from None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


class TrtRunner:
    """Runs a serialized engine on host numpy batches (float32 in, float32 logits out)."""

    def __init__(self, engine_file: str | os.PathLike, *, check_meta: bool = True):
        trt = import_trt()
        cudart = import_cudart()
        self._cudart = cudart
        self.gpu_name, self.compute_capability = current_gpu()
        if check_meta:
            reason = incompatibility(read_engine_meta(engine_file), trt.__version__,
                                     self.gpu_name, self.compute_capability)
            if reason:
                raise EngineError(reason)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        meta = read_engine_meta(engine_file) if check_meta else {}
        if meta.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT {trt.__version__} could not load {engine_file} (built for "
                              "another TensorRT or GPU?); rebuild it with `resnet-edge build`")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())  # non-default: no extra syncs
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode.OUTPUT)
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.max_shape = tuple(self.engine.get_tensor_profile_shape(self.input_name, 0)[2])
        self.context.set_input_shape(self.input_name, self.max_shape)
        max_out = tuple(self.context.get_tensor_shape(self.output_name))
        self.d_input = _check(cudart.cudaMalloc(int(np.prod(self.max_shape)) * self.input_dtype.itemsize))
        self.d_output = _check(cudart.cudaMalloc(int(np.prod(max_out)) * self.output_dtype.itemsize))
        self.context.set_tensor_address(self.input_name, int(self.d_input))
        self.context.set_tensor_address(self.output_name, int(self.d_output))

    def stage(self, batch: np.ndarray) -> tuple[int, ...]:
        if batch.shape[0] > self.max_shape[0]:
            raise EngineError(f"batch {batch.shape[0]} exceeds the engine's max batch "
                              f"{self.max_shape[0]}; rebuild with a larger --max-batch")
        host = np.ascontiguousarray(batch, dtype=self.input_dtype)
        self.context.set_input_shape(self.input_name, host.shape)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._cudart.cudaMemcpyAsync(self.d_input, host, host.nbytes, kind, self.stream))
        self._host_in = host  # keep alive until the copy is done
        return host.shape

    def execute(self, staged=None) -> None:
        if not self.context.execute_async_v3(stream_handle=self.stream):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def fetch(self) -> np.ndarray:
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), self.output_dtype)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self._cudart.cudaMemcpyAsync(out, self.d_output, out.nbytes, kind, self.stream))
        self.synchronize()
        return out.astype(np.float32, copy=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.stage(batch)
        self.execute()
        return self.fetch()

    def synchronize(self) -> None:
        _check(self._cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in (getattr(self, "d_input", None), getattr(self, "d_output", None)):
            if ptr is not None:
                self._cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None


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


def build_engine(model_dir: str | os.PathLike, precision: str, *, out_dir: str | os.PathLike | None = None,
                 max_batch: int = 32, opt_batch: int = 8, workspace_mib: int = 2048,
                 timing_cache: str | None = None, dla_core: int | None = None,
                 gpu_fallback: bool = False, version_compatible: bool = False,
                 hardware_compatible: bool = False, int8_source: str = "qdq",
                 typing: str = "auto") -> Path:
    """Parse the plan's ONNX file, build, write <engine> and its JSON record; return the path.

    Follows NVIDIA's samples/python/introductory_parser_samples and common.py.
    """
    trt = import_trt()
    gpu, capability = current_gpu()
    plan = build_plan(trt.__version__, precision, int8_source=int8_source, typing=typing,
                      dla=dla_core is not None)
    model_dir = Path(model_dir)
    onnx_path = model_dir / plan.onnx_file
    if not onnx_path.exists():
        raise EngineError(f"{onnx_path} not found; TensorRT {trt.__version__} {precision} builds "
                          f"from {plan.onnx_file} (made by resnet-edge "
                          f"{'calibrate' if 'int8' in plan.onnx_file else 'export'})")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    inp = network.get_input(0)
    chw = tuple(inp.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, *chw), (min(opt_batch, max_batch), *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    blob = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).exists() else b""
    config.set_timing_cache(config.create_timing_cache(blob), False)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.calibration_cache:
        cache = reheader_cache((model_dir / CACHE_FILE).read_text(), trt.__version__)
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
    if timing_cache:
        _atomic_write(Path(timing_cache), bytes(memoryview(config.get_timing_cache().serialize())))
    target_dir = Path(out_dir) if out_dir else engine_dir(model_dir, gpu, trt.__version__)
    engine = target_dir / f"model.{precision}.engine"
    _atomic_write(engine, bytes(serialized))
    write_engine_meta(engine, plan, onnx_path, gpu=gpu, capability=capability, builder="python",
                      input_name=inp.name, input_shape=list(chw),
                      profile={"min": 1, "opt": min(opt_batch, max_batch), "max": max_batch},
                      workspace_mib=workspace_mib, dla_core=dla_core, gpu_fallback=gpu_fallback,
                      version_compatible=version_compatible,
                      hardware_compatibility="ampere_plus" if hardware_compatible else "none",
                      build_seconds=round(seconds, 2))
    return engine


def write_engine_meta(engine: Path, plan: BuildPlan, onnx_path: Path, *, gpu: str, capability: str,
                      **details) -> None:
    """The JSON beside an engine that says what it was built for (checked before loading)."""
    meta = {"tensorrt": plan.tensorrt, "gpu": gpu, "compute_capability": capability,
            "precision": plan.precision, "onnx": plan.onnx_file,
            "onnx_sha256": hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest(),
            "plan": asdict(plan), "version_compatible": False, "hardware_compatibility": "none",
            **details, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic_write(Path(engine).with_suffix(ENGINE_JSON_SUFFIX),
                  (json.dumps(meta, indent=2) + "\n").encode())


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


# ---- command line, for the deploy bundle's build_engine.sh and verify.py ------------------

def _bundle_info(bundle: Path) -> dict:
    path = bundle / "bundle.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv=None) -> int:
    import argparse
    import shlex

    parser = argparse.ArgumentParser(prog="trt_engine.py", description="Plan, build or record "
                                     "a TensorRT engine for a resnet-edge bundle.")
    parser.add_argument("command", choices=["plan", "build", "record"])
    parser.add_argument("precision", choices=list(ONNX_FILES))
    parser.add_argument("--bundle", type=Path, default=Path("."))
    parser.add_argument("--tensorrt-version", help="[the installed TensorRT]")
    parser.add_argument("--engine", help="[engines/<gpu>-trt<version>/model.<precision>.engine]")
    parser.add_argument("--max-batch", type=int)
    parser.add_argument("--opt-batch", type=int)
    parser.add_argument("--workspace", type=int, default=2048, help="MiB")
    parser.add_argument("--timing-cache")
    parser.add_argument("--dla-core", type=int)
    parser.add_argument("--gpu-fallback", action="store_true")
    parser.add_argument("--int8-source", choices=["qdq", "cache"], default="qdq")
    parser.add_argument("--typing", choices=["auto", "weak", "strong"], default="auto")
    parser.add_argument("--shell", action="store_true", help="plan: one shell-quoted line")
    args = parser.parse_args(argv)
    info = _bundle_info(args.bundle)
    max_batch = args.max_batch or info.get("max_batch", 32)
    opt_batch = args.opt_batch or min(info.get("opt_batch", 8), max_batch)
    try:
        if args.command == "build":
            engine = build_engine(args.bundle, args.precision, max_batch=max_batch, opt_batch=opt_batch,
                                  workspace_mib=args.workspace, timing_cache=args.timing_cache,
                                  dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
                                  int8_source=args.int8_source, typing=args.typing,
                                  out_dir=Path(args.engine).parent if args.engine else None)
            print(engine)
            return 0
        version = args.tensorrt_version or import_trt().__version__
        plan = build_plan(version, args.precision, int8_source=args.int8_source, typing=args.typing,
                          dla=args.dla_core is not None)
        if args.command == "record":  # after trtexec built args.engine on this device
            gpu, capability = current_gpu()
            write_engine_meta(Path(args.engine), plan, args.bundle / plan.onnx_file, gpu=gpu,
                              capability=capability, builder="trtexec",
                              profile={"min": 1, "opt": opt_batch, "max": max_batch},
                              dla_core=args.dla_core, gpu_fallback=args.gpu_fallback)
            return 0
        engine = args.engine or str(engine_path(".", current_gpu()[0], version, args.precision))
        line = trtexec_command(plan, engine=engine, input_name=info.get("input_name", "input"),
                               input_shape=info.get("input_shape", (3, 224, 224)),
                               max_batch=max_batch, opt_batch=opt_batch, workspace_mib=args.workspace,
                               timing_cache=args.timing_cache, dla_core=args.dla_core,
                               gpu_fallback=args.gpu_fallback)
        print(shlex.join(line) if args.shell else "\n".join(line))
        return 0
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=__import__("sys").stderr)
        return 3 if isinstance(exc, EngineError) else 2


if __name__ == "__main__":
    raise SystemExit(main())
