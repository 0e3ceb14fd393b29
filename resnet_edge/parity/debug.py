"""`debug`: where a precision goes wrong, layer by layer.

The fp32 model and a candidate (the work dir's fp16 or int8 model, or any ONNX file) run on the
same images with every intermediate tensor exposed as an output, as Polygraphy users do by
marking all outputs; tensors the two graphs share by name are compared in the fp32 graph's
order and named after the PyTorch module that made them. The report gives each layer's error
relative to the fp32 tensor, how much it grew over the worst layer before it, and the first
layer whose error passes the tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..artifacts import WorkDir
from ..data import batches, data_for, open_data
from ..errors import BadInput, MissingBackend
from ..export import ONNX_NAME, export_profile, read_card
from ..export.metadata import load_onnx, module_of
from ..backends import ORT_FILES, remake_command
from ..runtime.ort import make_session

SCHEMA = "resnet-edge.debug/1"
TOLERANCE = {"fp16": 0.01, "int8": 0.1, "int8-fp16": 0.1}  # relative (L2) error of a tensor
SKIP_OPS = {"Constant", "Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Cast",
            "QuantizeLinear", "DequantizeLinear"}


@dataclass
class LayerError:
    index: int
    tensor: str
    module: str
    op: str
    rel_error: float  # ||candidate - fp32|| / ||fp32||
    max_abs: float
    cosine: float
    growth: float  # rel_error over the largest rel_error of the layers before it
    exceeds: bool


def exposed(model: onnx.ModelProto, names: list[str]) -> bytes:
    """`model` with `names` added as graph outputs, serialized for ONNX Runtime."""
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return model.SerializeToString()


def debug_layers(workdir: str | Path, precision: str, data_spec: str | None, *, images: int = 8,
                 tolerance: float | None = None, candidate: str | Path | None = None,
                 backend: str = "auto") -> dict:
    """Per-layer error of `precision` (or the `candidate` file) against the fp32 model, run by
    ONNX Runtime, or by a TensorRT debug engine with every compared tensor marked as an output
    (`backend="trt"`, built from the ONNX file this TensorRT's build plan picks). auto takes
    trt where TensorRT imports and the comparison is one it can build, else ort; the report's
    "backend" says which ran."""
    if precision not in TOLERANCE:
        raise BadInput(f"debug compares fp16, int8 or int8-fp16 with fp32; got {precision!r}")
    if backend not in ("auto", "ort", "trt"):
        raise BadInput(f"unknown --backend {backend!r}; use auto, trt or ort")
    if backend == "auto":
        import importlib.util
        buildable = candidate is None and precision != "int8-fp16"
        backend = "trt" if buildable and importlib.util.find_spec("tensorrt") else "ort"
    if backend == "trt" and (candidate is not None or precision == "int8-fp16"):
        raise BadInput("with --backend trt, debug builds from the ONNX file TensorRT's build plan "
                       "picks: use --precision fp16 or int8 and no --candidate")
    if images < 1:
        raise BadInput(f"--images must be at least 1, got {images}")
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    if not 0 < tolerance < 10:
        raise BadInput(f"--tolerance is a relative error, e.g. 0.01; got {tolerance}")
    workdir = Path(workdir)
    wd = WorkDir(workdir)
    wd.vouch(ONNX_NAME, remake_command(workdir, ONNX_NAME))
    engine_plan = None
    if backend == "trt":
        from ..runtime import trt_plan, trt_rules, trt_runner
        try:
            engine_plan = trt_plan.build_plan(trt_runner.import_trt().__version__, precision)
        except trt_rules.EngineError as exc:
            raise MissingBackend(str(exc)) from None
        candidate = wd.vouch(engine_plan.onnx_file, remake_command(workdir, engine_plan.onnx_file))
    if candidate is None:
        name = ORT_FILES[precision]
        if not wd.file(name).exists():
            raise BadInput(f"{workdir} has no {name}; make it with `{remake_command(workdir, name)}`")
        candidate = wd.vouch(name, remake_command(workdir, name))
    reference = load_onnx(wd.file(ONNX_NAME))
    card = read_card(reference)
    other = load_onnx(candidate)
    order = [(out, node) for node in reference.graph.node if node.op_type not in SKIP_OPS
             for out in node.output]
    shared = {out for node in other.graph.node for out in node.output}
    compared = [(out, node) for out, node in order if out in shared]
    if not compared:
        raise BadInput(f"{candidate} shares no tensor names with {ONNX_NAME}: it is not a "
                       "conversion of this model")
    names = [out for out, _ in compared]

    source = open_data(data_for(card, "test", data_spec, "--data"), input_shape=card.preprocess.input_shape)
    profile = export_profile(workdir)  # one batch within the model's profile
    rows = min(max(images, profile["min"]), profile["max"], len(source))
    x = next(iter(batches(source, card.preprocess, rows)))[0].numpy()
    if len(x) < profile["min"]:
        raise BadInput(f"{data_spec} has {len(x)} images, fewer than the model's batch {profile['min']}")
    input_name = next(i.name for i in reference.graph.input
                      if i.name not in {t.name for t in reference.graph.initializer})
    fp32 = make_session(exposed(reference, names))
    ref_out = dict(zip([o.name for o in fp32.get_outputs()], fp32.run(None, {input_name: x})))
    if engine_plan is not None:
        cand_out, candidate = _engine_outputs(workdir, precision, names, x)
    else:  # Q/DQ as written: the numerics TensorRT will see, as parity runs them
        cand = make_session(exposed(other, names), disable_qdq_fusion=True)
        cand_out = dict(zip([o.name for o in cand.get_outputs()], cand.run(None, {input_name: x})))

    rows, worst, first = [], 0.0, None
    for index, (name, node) in enumerate(compared):
        if name not in cand_out:  # TensorRT may not expose a tensor it had to fold away
            continue
        a = np.asarray(ref_out[name], dtype=np.float64).ravel()
        b = np.asarray(cand_out[name], dtype=np.float64).ravel()
        if a.shape != b.shape:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))
            cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        rel = rel if np.isfinite(rel) else float("inf")
        exceeds = rel > tolerance
        rows.append(LayerError(index, name, module_of(node) or node.name, node.op_type, rel,
                               float(np.max(np.abs(b - a))) if np.isfinite(b).all() else float("inf"),
                               cosine, rel / worst if worst > 0 else 1.0, exceeds))
        if exceeds and first is None:
            first = rows[-1]
        worst = max(worst, rel)
    return {"schema": SCHEMA, "workdir": str(workdir), "precision": precision, "backend": backend,
            "candidate": str(candidate), "data": data_spec, "images": int(len(x)),
            "tolerance": tolerance, "layers": [asdict(r) for r in rows],
            "first_exceeding": asdict(first) if first else None,
            "model": card.to_dict()}


def _engine_outputs(workdir: Path, precision: str, names: list[str], x: np.ndarray):
    """Every tensor in `names` that a TensorRT debug engine exposes, on `x`."""
    import tempfile

    from ..runtime import trt_engine, trt_rules, trt_runner
    profile = export_profile(workdir)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            engine = trt_engine.build_engine(workdir, precision, out_dir=tmp, max_batch=profile["max"],
                                             opt_batch=len(x), min_batch=profile["min"],
                                             timing_cache=None, mark_outputs=names)
            runner = trt_runner.TrtRunner(engine)
            try:
                outputs = runner.run_all(x)
            finally:
                runner.close()
            meta = trt_rules.read_engine_meta(engine)
    except trt_rules.EngineError as exc:
        raise MissingBackend(str(exc)) from None
    return outputs, f"tensorrt {meta['tensorrt']} {precision} debug engine ({meta['gpu']})"


__all__ = ["debug_layers", "TOLERANCE", "SCHEMA"]
