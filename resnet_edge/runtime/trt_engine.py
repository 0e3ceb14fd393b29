"""TensorRT engines: plan, build, load, check compatibility, run. Free of torch on purpose: the deploy bundle
copies this one file next to verify.py so a Jetson runs it with JetPack's Python, numpy,
TensorRT and cuda-python only.

The API use follows NVIDIA's samples (samples/python/common.py, common_runtime.py) and the rules
in shared/reference/tensorrt-api.md: execute_async_v3 with tensor addresses on a non-default
stream; the enum *names*, never their values, because those changed across 8.x/10.x/11.x.
Which names each release has is checked by tests/test_trt_conformance.py against stand-ins made
from NVIDIA's own API surface per release; behaviour only by the tensorrt-marked tests on a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ENGINE_JSON_SUFFIX = ".json"
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# int8 whose float (non-quantized) parts are fp16: what strongly typed builds want, since they
# take every precision from the file (ModelOpt's high_precision_dtype="fp16")
INT8_FP16_FILE = "model.int8-fp16.onnx"
CACHE_FILE = "calibration.cache"
TIMING_CACHE_FILE = "timing.cache"
# DLA: from 8.5 to 10.7, "the last 10.x release that supported DLA"; 11.0-11.3 have none and
# 11.4 brings it back only on AGX Orin with JetPack 7.2.2, strongly typed (not built here yet).
DLA_VERSIONS = ((8, 5), (10, 7))


class EngineError(Exception):
    """An engine cannot be built or used here; the message says why and what to do."""


# ---- pure decisions, tested without TensorRT ----------------------------------------------

def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def family(version: str) -> str:
    """The API family a TensorRT version belongs to, as the build plan tells them apart."""
    v = version_tuple(version)
    if v[0] == 8:
        return f"{v[0]}.{v[1]}"
    if v[0] == 10:
        return "10.12+" if v[:2] >= (10, 12) else "10.0-10.11"
    return f"{v[0]}.x"


def max_onnx_opset(tensorrt_version: str) -> int:
    """The newest ONNX opset the release's parser reads (onnx/onnx-tensorrt docs/operators.md:
    8.5 and 8.6 "up to Opset 17", 10.0 "opset 9 to opset 20", 10.15 "opset 9 to opset 24")."""
    v = version_tuple(tensorrt_version)
    if v[0] < 10:
        return 17
    return 24 if v[:2] >= (10, 15) else 20


def opset_problem(onnx_file: str, opset: int | None, tensorrt_version: str) -> str | None:
    """One line, said before a build, when this TensorRT's parser cannot read the file."""
    newest = max_onnx_opset(tensorrt_version)
    if opset is None or opset <= newest:
        return None
    return (f"{onnx_file} is ONNX opset {opset}, and TensorRT {tensorrt_version} reads opset "
            f"<= {newest}; export with --exporter torchscript (opset 17) and bundle that "
            "(JetPack 5: --target jetpack5; JetPack 6.0: --target jetpack6)")


def family_note(target_tensorrt: str | None, here: str) -> str | None:
    """One line when a bundle meant for one TensorRT family is built on another."""
    if not target_tensorrt or family(target_tensorrt) == family(here):
        return None
    return (f"note: this bundle targets TensorRT {target_tensorrt} ({family(target_tensorrt)}); "
            f"this device has {here} ({family(here)}), so the {family(here)} build rules apply")


def gpu_slug(gpu_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def engine_dir(base: str | os.PathLike, gpu_name: str, trt_version: str) -> Path:
    major_minor = ".".join(str(p) for p in version_tuple(trt_version)[:2])
    return Path(base) / "engines" / f"{gpu_slug(gpu_name)}-trt{major_minor}"


def engine_path(base, gpu_name: str, trt_version: str, precision: str) -> Path:
    return engine_dir(base, gpu_name, trt_version) / f"model.{precision}.engine"


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
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path} is not a readable build record ({exc}); rebuild the engine") from None
    if not isinstance(meta, dict):
        raise EngineError(f"{path} is not a build record; rebuild the engine")
    return meta


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
    TF32, which TensorRT enables by default on Ampere and newer. DLA engines (8.5-10.7) have one
    batch size and take int8 from the calibration cache unless `int8_source="qdq"`.
    """
    if precision not in ONNX_FILES:
        raise ValueError(f"unknown precision {precision!r}; use fp32, fp16, int8")
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
        if precision == "fp32":
            raise ValueError("DLA runs fp16 and int8 only; build fp32 for the GPU")
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
        onnx_file = ONNX_FILES[precision]
        if precision == "int8" and int8_float != "fp32":
            onnx_file = INT8_FP16_FILE
        network = ("STRONGLY_TYPED",) if major == 10 else ()  # 11.x: always on, flag ignored
        trtexec = (("--stronglyTyped",) if major == 10 else ()) + common
        return BuildPlan(tensorrt_version, precision, onnx_file, network, (), cleared, True,
                         False, False, version_compatible, hardware_compatible, trtexec)
    network = ("EXPLICIT_BATCH",) if major == 8 else ()
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[precision]
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


def cache_header(tensorrt_version: str, algorithm: str = "EntropyCalibration2") -> str:
    """`TRT-<NV_TENSORRT_VERSION>-<algorithm>`: 8.5.2 -> 8502, 10.3.0 -> 100300."""
    major, minor, patch = (list(version_tuple(tensorrt_version)) + [0, 0])[:3]
    code = major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch
    return f"TRT-{code}-{algorithm}"


def reheader_cache(text: str, tensorrt_version: str) -> str:
    """A calibration cache's first line names the TensorRT version that reads it; TensorRT
    ignores a cache headed for another version (NVIDIA/TensorRT#1378)."""
    _, _, body = text.partition("\n")
    return f"{cache_header(tensorrt_version)}\n{body}"


def cuda_python_problem(installed: str, driver_cuda: int, wanted: str | None = None) -> str | None:
    """Why this cuda-python cannot drive a device whose driver supports CUDA `driver_cuda`
    (cudaDriverGetVersion, e.g. 12060), or None. cuda-python N.x needs a CUDA N driver; a
    bundle's target may ask for a narrower range (`wanted`, as ">=12.6.1,<13")."""
    have = version_tuple(installed)
    driver = (driver_cuda // 1000, driver_cuda % 1000 // 10)
    fix = wanted or f">={driver[0]},<{driver[0] + 1}"
    if have[:1] > driver[:1]:
        return (f"cuda-python {installed} needs a CUDA {have[0]} driver, this device's driver "
                f"supports CUDA {driver[0]}.{driver[1]}; pip install 'cuda-python{fix}'")
    if wanted and not _satisfies(have, wanted):
        return (f"cuda-python {installed} does not match this bundle's CUDA ({wanted}); "
                f"pip install 'cuda-python{wanted}'")
    return None


def _satisfies(version: tuple[int, ...], spec: str) -> bool:
    for clause in spec.split(","):
        op, bound = re.match(r"\s*(>=|<|==)\s*([\d.]+)", clause).groups()
        bound_v = version_tuple(bound)
        padded = version[:len(bound_v)]
        if not {">=": padded >= bound_v, "<": padded < bound_v, "==": padded == bound_v}[op]:
            return False
    return True


# ---- TensorRT and CUDA ------------------------------------------------------------------

def import_trt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError("TensorRT is not installed (pip install 'resnet-edge[tensorrt]' on x86; "
                          "JetPack ships it on Jetsons)") from None
    return tensorrt


def cuda_python_version() -> str:
    for module, attribute in (("cuda.bindings", "__version__"), ("cuda", "__version__")):
        try:
            found = getattr(__import__(module, fromlist=["_"]), attribute, None)
        except ImportError:
            found = None
        if found:
            return str(found)
    from importlib import metadata
    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def import_cudart(wanted: str | None = None):
    """cuda-python's runtime module, checked against this device's driver (and the bundle's
    target range `wanted`); a missing or mismatched cuda-python is an EngineError (exit 3)."""
    hint = f"pip install 'cuda-python{wanted or '>=12,<13'}'" + ("" if wanted else
                                                                " (match your driver's CUDA major)")
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6.1
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise EngineError(f"cuda-python is not installed; {hint}") from None
    err, driver = cudart.cudaDriverGetVersion()
    if err == cudart.cudaError_t.cudaSuccess and driver:
        problem = cuda_python_problem(cuda_python_version(), driver, wanted)
        if problem:
            raise EngineError(problem)
    return cudart


def _check(cudart, result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"CUDA call failed: {cudart.cudaGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else values or None


def current_gpu(cudart=None) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of device 0."""
    cudart = cudart or import_cudart()
    try:
        props = _check(cudart, cudart.cudaGetDeviceProperties(0))
    except EngineError as exc:
        raise EngineError(f"no usable CUDA GPU ({exc})") from None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), f"{props.major}.{props.minor}"


def native_handle(stream) -> int:
    """The stream as the int execute_async_v3 takes; newer cuda-bindings deprecate int(stream)."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


class TrtRunner:
    """Runs a serialized engine on host numpy batches (float32 in, float32 logits out)."""

    def __init__(self, engine_file: str | os.PathLike, *, check_meta: bool = True,
                 cuda_python: str | None = None):
        trt = import_trt()
        cudart = import_cudart(cuda_python)
        self._cudart = cudart
        self.gpu_name, self.compute_capability = current_gpu(cudart)
        meta = read_engine_meta(engine_file) if check_meta else {}
        if check_meta:
            reason = incompatibility(meta, trt.__version__, self.gpu_name, self.compute_capability)
            if reason:
                raise EngineError(reason)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if meta.get("dla_core") is not None:  # the runtime loads a DLA engine onto its own core
            self.runtime.DLA_core = int(meta["dla_core"])
        if meta.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT {trt.__version__} could not load {engine_file} (built for "
                              "another TensorRT or GPU?); rebuild it with `resnet-edge build`")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart, cudart.cudaStreamCreate())  # non-default: no extra syncs
        self.stream_handle = native_handle(self.stream)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode.INPUT)
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == mode.OUTPUT]
        # the model's own output (logits); a debug engine marks intermediate tensors too
        self.output_name = meta.get("output_name") if meta.get("output_name") in outputs else outputs[0]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in outputs}
        low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.max_shape = tuple(int(d) for d in high)
        self._set_shape(self.max_shape)
        self.d_input = _check(cudart, cudart.cudaMalloc(int(np.prod(self.max_shape)) * self.input_dtype.itemsize))
        self.context.set_tensor_address(self.input_name, int(self.d_input))
        self.d_outputs = {}
        for name in outputs:
            size = int(np.prod(tuple(self.context.get_tensor_shape(name)))) * self.dtypes[name].itemsize
            self.d_outputs[name] = _check(cudart, cudart.cudaMalloc(size))
            self.context.set_tensor_address(name, int(self.d_outputs[name]))
        self._rows = 0

    def _set_shape(self, shape) -> None:
        if not self.context.set_input_shape(self.input_name, tuple(shape)):
            raise EngineError(f"the engine refused input shape {tuple(shape)}")

    def stage(self, batch: np.ndarray) -> tuple[int, ...]:
        rows = batch.shape[0]
        if rows > self.max_batch:
            raise EngineError(f"batch {rows} exceeds the engine's max batch {self.max_batch}; "
                              "rebuild with a larger --max-batch")
        host = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if rows < self.min_batch:  # a static-shape (DLA) engine runs its one batch size
            host = np.concatenate([host, np.zeros((self.min_batch - rows, *host.shape[1:]), host.dtype)])
        self._set_shape(host.shape)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self._cudart, self._cudart.cudaMemcpyAsync(self.d_input, host, host.nbytes, kind, self.stream))
        self._host_in = host  # keep alive until the copy is done
        self._rows = rows
        return host.shape

    def execute(self, staged=None) -> None:
        if not self.context.execute_async_v3(stream_handle=self.stream_handle):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def fetch(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs as float32 host arrays, the batch's own rows only."""
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        found = {}
        for name in names or [self.output_name]:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
            _check(self._cudart, self._cudart.cudaMemcpyAsync(out, self.d_outputs[name], out.nbytes,
                                                              kind, self.stream))
            found[name] = out
        self.synchronize()
        return {n: a[:self._rows].astype(np.float32, copy=False) for n, a in found.items()}

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.stage(batch)
        self.execute()
        return self.fetch()[self.output_name]

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output the engine has: with a debug engine, each marked layer output."""
        self.stage(batch)
        self.execute()
        return self.fetch(list(self.d_outputs))

    def synchronize(self) -> None:
        _check(self._cudart, self._cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        for ptr in (getattr(self, "d_input", None), *getattr(self, "d_outputs", {}).values()):
            if ptr is not None:
                self._cudart.cudaFree(ptr)
        self.d_input, self.d_outputs = None, {}
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
    engine = target_dir / f"model.{precision}.engine"
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

def device_dir(bundle: Path) -> Path:
    """Where a device writes engines, caches and reports for a bundle: never inside the bundle
    (whose every file the manifest lists), but beside it, or $RESNET_EDGE_DEVICE_DIR."""
    override = os.environ.get("RESNET_EDGE_DEVICE_DIR")
    bundle = Path(bundle).resolve()
    return Path(override) if override else bundle.parent / f"{bundle.name}.device"


def bundle_info(bundle: Path) -> dict:
    path = Path(bundle) / "bundle.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv=None) -> int:
    import argparse
    import shlex

    parser = argparse.ArgumentParser(
        prog="trt_engine.py", description="Check, plan, build or record a TensorRT engine for a "
        "resnet-edge bundle. `plan` writes the calibration cache copy headed for this TensorRT "
        "beside the engine and prints the trtexec line.")
    parser.add_argument("command", choices=["check", "plan", "build", "record"])
    parser.add_argument("precision", nargs="?", default="fp16", choices=list(ONNX_FILES))
    parser.add_argument("--bundle", type=Path, default=Path("."))
    parser.add_argument("--device-dir", type=Path, help="[<bundle>.device, or $RESNET_EDGE_DEVICE_DIR]")
    parser.add_argument("--tensorrt-version", help="[the installed TensorRT]")
    parser.add_argument("--engine", help="[<device dir>/engines/<gpu>-trt<version>/model.<precision>.engine]")
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
            note = family_note(info.get("tensorrt"), trt.__version__)
            if note:
                print(note, file=sys.stderr)
            print(f"TensorRT {trt.__version__}, cuda-python {cuda_python_version()}, "
                  f"{gpu} (compute capability {capability})")
            return 0
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
            devices, args.gpu or current_gpu(import_cudart(cuda_python))[0], version, args.precision)
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
