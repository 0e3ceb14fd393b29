"""Running a serialized TensorRT engine from Python, as NVIDIA's samples do
(samples/python/common.py, common_runtime.py): execute_async_v3 with tensor addresses on a
non-default stream, cuda-python checked against the driver, the enum *names* (their values
changed across 8.x/10.x/11.x). Checked against stand-ins per release by
tests/test_trt_conformance.py; behaviour only by the tensorrt-marked tests on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

try:  # inside the resnet_edge package
    from ..errors import install_hint
    from .trt_rules import EngineError, cuda_python_problem, incompatibility, read_engine_meta
    TRT_HINT = f"x86: {install_hint('cuda12')} (cuda13 for a CUDA 13 driver)"
except ImportError:  # flat in a bundle's lib/
    from trt_rules import EngineError, cuda_python_problem, incompatibility, read_engine_meta  # type: ignore[no-redef]
    TRT_HINT = "x86: pip install 'tensorrt-cu12>=10,<11' (tensorrt-cu13 for a CUDA 13 driver)"


def import_trt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError(f"TensorRT is not installed ({TRT_HINT}; JetPack ships it on Jetsons)") from None
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

    def capture(self, batch_size: int) -> None:
        """enqueueV3 for `batch_size` captured as a CUDA graph, as trtexec's --useCudaGraph
        does (sampleInference.cpp): one enqueue at the new shape first, outside the capture,
        so the context's shape-dependent setup is done; then the captured enqueue."""
        cudart = self._cudart
        self.stage(np.zeros((batch_size, *self.max_shape[1:]), self.input_dtype))
        self.execute()
        self.synchronize()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(cudart, cudart.cudaStreamBeginCapture(self.stream, mode))
        try:
            self.execute()
        except EngineError:
            # end the capture, as trtexec does when the captured enqueue fails: a stream left
            # capturing refuses every later synchronize and copy on it
            ended = cudart.cudaStreamEndCapture(self.stream)
            if ended[0] == cudart.cudaError_t.cudaSuccess and ended[1] is not None:
                cudart.cudaGraphDestroy(ended[1])
            raise
        self._graph = _check(cudart, cudart.cudaStreamEndCapture(self.stream))
        self._graph_exec = _check(cudart, cudart.cudaGraphInstantiate(self._graph, 0))

    def replay(self) -> None:
        """The captured enqueue again, on inputs already staged into the same buffers."""
        _check(self._cudart, self._cudart.cudaGraphLaunch(self._graph_exec, self.stream))

    def close(self) -> None:
        if getattr(self, "_graph_exec", None) is not None:
            self._cudart.cudaGraphExecDestroy(self._graph_exec)
            self._cudart.cudaGraphDestroy(self._graph)
            self._graph_exec = self._graph = None
        for ptr in (getattr(self, "d_input", None), *getattr(self, "d_outputs", {}).values()):
            if ptr is not None:
                self._cudart.cudaFree(ptr)
        self.d_input, self.d_outputs = None, {}
        if getattr(self, "stream", None) is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None
