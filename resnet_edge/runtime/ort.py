"""ONNX Runtime sessions, configured the one way every caller in this tool wants them.

No module-level imports from this package: the deploy bundle copies this file so verify.py's
ONNX Runtime fallback opens sessions exactly like `parity` does.
"""

from __future__ import annotations

import os
from typing import Sequence

INSTALL_HINT = "pip install 'resnet-edge[cpu]' (or 'resnet-edge[gpu]' on NVIDIA machines)"


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        from ..errors import MissingBackend
        raise MissingBackend(f"onnxruntime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


class BatchOutOfRange(ValueError):
    """A batch larger than the model's profile allows."""


def run_batch(session, input_name: str, batch, batch_range: tuple[int, int] | None = None):
    """One session run within the model's batch profile (min, max): a batch below min (a static
    model, the last short batch) is padded with zeros and its extra rows dropped; one above max
    is refused."""
    import numpy as np
    rows = len(batch)
    if batch_range is not None:
        low, high = batch_range
        if rows > high:
            raise BatchOutOfRange(f"a batch of {rows} is outside the model's batch profile "
                                  f"{low}..{high} (set at export: --batch, --min-batch, --max-batch)")
        if rows < low:
            batch = np.concatenate([batch, np.zeros((low - rows, *batch.shape[1:]), batch.dtype)])
    return session.run(None, {input_name: batch})[0][:rows]


def default_threads() -> int:
    """One thread per core, or $OMP_NUM_THREADS where set (as torch reads it): what keeps
    several processes on one machine (test workers, a CI matrix) from oversubscribing it."""
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        wanted = 0
    return wanted if wanted > 0 else os.cpu_count() or 1


def make_session(path: str | os.PathLike | bytes, providers: Sequence = ("CPUExecutionProvider",),
                 *, threads: int | None = None, disable_qdq_fusion: bool = False,
                 optimized_model: str | os.PathLike | None = None):
    """An InferenceSession set for speed: all graph optimizations, default_threads() threads.

    `providers`: names, or (name, options) pairs. Fallback is off: a provider that fails is an
    error here, never a quiet retry on another provider (ONNX Runtime's Python wrapper would
    otherwise print its "EP Error" block and run the model elsewhere).
    `disable_qdq_fusion` runs Q/DQ nodes as written instead of fusing them into ORT's CPU integer
    kernels: the numerics TensorRT will see, rather than ORT-CPU's own int8 kernels.
    `optimized_model`: where ORT writes the graph it optimized (what int8_path reads).
    """
    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.log_severity_level = 3
    if disable_qdq_fusion:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if optimized_model is not None:
        options.optimized_model_filepath = os.fspath(optimized_model)
    model = path if isinstance(path, bytes) else os.fspath(path)  # bytes: a model not yet saved
    return ort.InferenceSession(model, sess_options=options, providers=list(providers),
                                enable_fallback=0)


INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
               "QLinearGlobalAveragePool", "QLinearAveragePool", "ConvInteger", "MatMulInteger")


def int8_path(optimized_model: str | os.PathLike | None) -> dict:
    """Which way ONNX Runtime's CPU provider runs an int8 model, from the graph its session
    optimized (make_session's `optimized_model`; None for a session with Q/DQ as written):
    fused into integer kernels, counted by op type, or Q/DQ as written (float arithmetic on
    dequantized values, what TensorRT's numerics follow)."""
    if optimized_model is None:
        return {"path": "Q/DQ as written", "integer_ops": {}}
    try:
        import onnx
    except ImportError:  # a device without the onnx package: say what is unknown
        return {"path": "fused integer kernels (not counted: no onnx package)", "integer_ops": None}
    graph = onnx.load(os.fspath(optimized_model), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in INTEGER_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        return {"path": "Q/DQ as written (ONNX Runtime fused nothing)", "integer_ops": {}}
    return {"path": "fused integer kernels", "integer_ops": dict(sorted(counts.items()))}
