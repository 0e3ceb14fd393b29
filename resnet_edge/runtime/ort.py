"""ONNX Runtime sessions, configured the one way every caller in this tool wants them.

Of this package it imports only errors (the bottom layer), and does without it: the deploy
bundle copies this file so verify.py's ONNX Runtime fallback opens sessions exactly like `parity`
does, on the device's Python (3.8 and up) and numpy (1.17 and up).
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Sequence

try:  # inside the resnet_edge package: the CLI's exit 3
    from ..errors import MissingBackend, install_hint
    INSTALL_HINT = install_hint("cpu") + " (cuda12 or cuda13 on NVIDIA machines, by the driver's CUDA major)"
except ImportError:  # flat in a bundle's lib/: verify.py exits with its exit_code
    class MissingBackend(Exception):  # type: ignore[no-redef]
        exit_code = 3
    # on a device: the wheels themselves (onnxruntime-gpu's Jetson builds come from NVIDIA's
    # Jetson AI Lab index, not PyPI)
    INSTALL_HINT = "pip install onnxruntime (or onnxruntime-gpu for the device's CUDA)"


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise MissingBackend(f"onnxruntime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


# What each ONNX Runtime release reads: (release, newest ONNX IR version, newest default-domain
# opset). Newer IR is refused in onnxruntime/core/graph/model.cc ("Unsupported model IR version:
# N, max supported IR version: M", M being the IR_VERSION of the onnx it was built with), newer
# opsets in core/graph/model_load_utils.h ("ONNX Runtime only *guarantees* support for models
# stamped with official released onnx opset versions"; 1.15 has opset 19's schemas but not its
# kernels). Measured from each release's PyPI wheel on Python 3.10, by opening models stamped
# with each IR and opset until one was refused (benchmarks/ort_reads.py repeats it).
ORT_READS = ((1, 12, 8, 17), (1, 13, 8, 17), (1, 14, 8, 18), (1, 15, 9, 18), (1, 16, 9, 19),
             (1, 17, 9, 20), (1, 18, 10, 21), (1, 19, 10, 21), (1, 20, 10, 21), (1, 21, 10, 22),
             (1, 22, 10, 22), (1, 23, 11, 23))


def _varint(read) -> int | None:
    """One protobuf varint from `read` (a file's or a buffer's read); None at the very end."""
    value = shift = 0
    while True:
        byte = read(1)
        if not byte:
            if shift:
                raise ValueError("truncated varint")
            return None
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            return value
        if shift > 63:
            raise ValueError("varint too long")


def _fields(handle, wanted: set):
    """(field number, value) for each top-level field of the protobuf message in `handle` whose
    number is in `wanted`: ints for varints, bytes for length-delimited fields. Others (a
    model's graph and weights) are skipped by their length, never read."""
    while True:
        tag = _varint(handle.read)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value = _varint(handle.read)
        elif wire == 2:
            size = _varint(handle.read) or 0
            if number not in wanted:
                handle.seek(size, os.SEEK_CUR)
                continue
            value = handle.read(size)
        elif wire in (1, 5):
            handle.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            continue
        else:
            raise ValueError(f"not a protobuf message (wire type {wire})")
        if number in wanted:
            yield number, value


def model_versions(path: str | os.PathLike) -> tuple[int, int | None]:
    """(IR version, default-domain opset) of an ONNX file, read from ModelProto's own fields
    (ir_version = 1, opset_import = 8) without the onnx package, which a device may lack."""
    import io
    ir, opset = 0, None
    with open(path, "rb") as handle:
        for number, value in _fields(handle, {1, 8}):
            if number == 1:
                ir = value
            elif isinstance(value, bytes):
                entry = dict(_fields(io.BytesIO(value), {1, 2}))
                if entry.get(1, b"") in (b"", b"ai.onnx") and isinstance(entry.get(2), int):
                    opset = entry[2]
    return ir, opset


def oldest_reading(ir: int, opset: int | None) -> str | None:
    """The oldest ONNX Runtime release (major.minor) that reads IR `ir` and `opset`, or None
    when no release in ORT_READS does."""
    row = next((row for row in ORT_READS if ir <= row[2] and (opset or 0) <= row[3]), None)
    return f"{row[0]}.{row[1]}" if row else None


def reading_problem(path: str | os.PathLike, release: str) -> str | None:
    """Why ONNX Runtime `release` cannot open the file at `path` (its IR or opset is newer than
    the release reads), naming the release that can; None when it can, or when `release` is
    newer than ORT_READS knows (it reads at least what the newest one does)."""
    try:
        wanted = tuple(int(part) for part in release.split(".")[:2])
        ir, opset = model_versions(path)
    except (ValueError, OSError):
        return None  # not a version or not a model: ONNX Runtime says what it is
    known = [row for row in ORT_READS if row[:2] <= wanted]
    reads = known[-1] if known else ORT_READS[0]  # before 1.12: at most what 1.12 reads
    if ORT_READS[-1][:2] < wanted or (ir <= reads[2] and (opset or 0) <= reads[3]):
        return None
    needed = oldest_reading(ir, opset)
    fix = (f"install onnxruntime {needed} or newer (pip install 'onnxruntime>={needed}')"
           if needed else "install a newer onnxruntime")
    name = os.path.basename(os.fspath(path))
    return (f"{name} is ONNX IR {ir}, opset {opset}, and onnxruntime {release} reads IR <= "
            f"{reads[2]}, opset <= {reads[3]}; {fix}")


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


class ProviderFellBack(MissingBackend):
    """A session that did not come up on the providers asked for: the row cannot run here."""


def _provider_name(provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def make_session(path: str | os.PathLike | bytes, providers: Sequence = ("CPUExecutionProvider",),
                 *, threads: int | None = None, disable_qdq_fusion: bool = False,
                 optimized_model: str | os.PathLike | None = None):
    """An InferenceSession set for speed: all graph optimizations, default_threads() threads.

    `providers`: names, or (name, options) pairs. The session runs on exactly those, or this
    raises ProviderFellBack with ONNX Runtime's own reason: `enable_fallback=0` is read only by
    onnxruntime 1.23 and newer (1.18-1.22 retry on the CPU after printing an "EP Error" block,
    and a CUDA provider that cannot load is a warning on every release), so what came up is
    compared with what was asked, and the block is caught rather than printed. A GPU session
    also refuses to place single nodes on the CPU (session.disable_cpu_ep_fallback).
    `disable_qdq_fusion` runs Q/DQ nodes as written instead of fusing them into ORT's CPU integer
    kernels: the numerics TensorRT will see, rather than ORT-CPU's own int8 kernels.
    `optimized_model`: where ORT writes the graph it optimized (what int8_path reads).
    """
    ort = import_ort()
    problem = None if isinstance(path, bytes) else reading_problem(path, ort.__version__)
    if problem:  # said before ONNX Runtime's own multi-line refusal
        raise MissingBackend(problem)
    asked = [_provider_name(p) for p in providers]
    model = path if isinstance(path, bytes) else os.fspath(path)  # bytes: a model not yet saved

    def session_options(whole_graph: bool):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_threads()
        options.log_severity_level = 3
        if disable_qdq_fusion:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        if whole_graph:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if optimized_model is not None:
            options.optimized_model_filepath = os.fspath(optimized_model)
        return options

    said = io.StringIO()

    def opened(chosen, whole_graph: bool):
        said.seek(0)
        said.truncate()
        with contextlib.redirect_stdout(said):  # where 1.18-1.22 print their fallback block
            return ort.InferenceSession(model, sess_options=session_options(whole_graph),
                                        providers=list(chosen), enable_fallback=0)

    on_gpu = asked != ["CPUExecutionProvider"]
    try:
        session = opened(providers, whole_graph=on_gpu)
    except Exception as exc:  # noqa: BLE001 (ONNX Runtime's own error types)
        if not on_gpu:
            raise
        why = _printed_reason(said.getvalue()) or _without_location(str(exc))
        try:  # a model the CPU opens: the failure was the provider's, which is this row's reason
            opened(["CPUExecutionProvider"], whole_graph=False)
        except Exception:  # noqa: BLE001
            raise exc from None
        if "fallback to CPU EP has been explicitly disabled" not in why:
            raise ProviderFellBack(f"{_short(asked[0])} did not load ({why})") from None
        # nodes landed on the CPU: because the provider did not load at all (said below), or
        # because it cannot run some of them
        session = opened(providers, whole_graph=False)
        if session.get_providers()[:len(asked)] == asked:
            raise ProviderFellBack(f"{_short(asked[0])} cannot run every node of this model: "
                                   "ONNX Runtime would run some on the CPU") from None
    ran = session.get_providers()
    if ran[:len(asked)] != asked:
        short = _short(next((name for name in asked if name not in ran), asked[0]))
        why = _printed_reason(said.getvalue())
        raise ProviderFellBack(f"{short} did not load{f' ({why})' if why else ''}; the session "
                               f"came up on {ran[0]} instead")
    return session


def _short(provider: str) -> str:
    return provider.replace("ExecutionProvider", "")


def _printed_reason(printed: str) -> str | None:
    """ONNX Runtime's own words from the fallback block 1.18-1.22 print ("EP Error <reason>
    when using [...]"), or None where it printed none."""
    start, end = printed.find("\nEP Error "), printed.find(" when using ")
    if 0 <= start < end:
        return _without_location(printed[start + len("\nEP Error "):end])
    return None


def _without_location(text: str) -> str:
    """ONNX Runtime's message without the source location and function it starts with
    ("/onnxruntime_src/...cc:490 void f(...) Please install ...")."""
    text = " ".join(text.split())
    marker = text.find(") ")
    return (text[marker + 2:] if text.startswith("/") and marker > 0 else text)[:300]


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
