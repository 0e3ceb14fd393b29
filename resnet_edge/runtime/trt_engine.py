"""TensorRT engines: load, check compatibility, run. Free of torch on purpose: the deploy bundle
copies this one file next to verify.py so a Jetson runs it with JetPack's Python, numpy,
TensorRT and cuda-python only (`pip install cuda-python`).

The API use follows NVIDIA's samples (samples/python/common_runtime.py) and the rules in
shared/reference/tensorrt-api.md: execute_async_v3 with tensor addresses on a non-default
stream; the enum *names*, never their values, because those changed across 8.x/10.x/11.x.
"""

from __future__ import annotations

import json
import os
import re
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
        _check(self._cudart.cudaMemcpyAsync(self.d_input, host.ctypes.data, host.nbytes, kind,
                                            self.stream))
        self._host_in = host  # keep alive until the copy is done
        return host.shape

    def execute(self, staged=None) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def fetch(self) -> np.ndarray:
        out = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), self.output_dtype)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self._cudart.cudaMemcpyAsync(out.ctypes.data, self.d_output, out.nbytes, kind,
                                            self.stream))
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
