"""torch -> ONNX: export, embed the ModelCard, check, record in the manifest; then the FP16
variant (for strongly typed TensorRT and ORT fp16) and the PyTorch checkpoint that the torch
backend of `parity` rebuilds the model from."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import onnx
import torch
from onnx import version_converter
from onnxconverter_common import float16
from torch import nn

from ..artifacts import WorkDir, ensure_writable_dir, open_dir, write_bytes_atomic
from ..errors import BadInput, GateFailed
from ..zoo import ModelCard, load_checkpoint, read_checkpoint, save_checkpoint
from .checks import BatchCheck, check_sizes, compare_with_onnxruntime, run_checker
from .metadata import load_onnx, read_card, read_export_options, write_metadata
from .torch_to_onnx import ExportOptions, export_onnx

ONNX_NAME = "model.onnx"
FP16_NAME = "model.fp16.onnx"
CHECKPOINT_NAME = "model.pt"


@dataclass
class ExportResult:
    path: Path
    skipped: bool
    checks: list[BatchCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def export_model(model: nn.Module, card: ModelCard, out_dir: str | Path,
                 options: ExportOptions = ExportOptions(), *, force: bool = False, fp16: bool = True,
                 step: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Write model.onnx (+ model.pt, model.fp16.onnx) in `out_dir` and record them, each
    skipped when the same inputs already made it.

    model.onnx appears only after the checker and the ONNX Runtime comparison pass; on any
    failure or interruption no model.onnx is left behind. Each file is serialized once, checked
    in memory and hashed from the bytes written, never read back.
    """
    options = options.resolved()
    workdir = WorkDir(ensure_writable_dir(out_dir))
    inputs = {"card": card.to_dict()}
    recorded = asdict(options)
    outputs = [ONNX_NAME, CHECKPOINT_NAME, *([FP16_NAME] if fp16 else [])]
    result = ExportResult(workdir.file(ONNX_NAME), skipped=True)
    redo_onnx = force or not workdir.is_fresh(ONNX_NAME, inputs, recorded)
    redo_checkpoint = force or not workdir.is_fresh(CHECKPOINT_NAME, inputs, {})
    # the manifest is a file like any other (copied, edited, forged with the file it vouches
    # for): "up to date" is said of files that compute this model, checked, not of the record
    if not redo_onnx and not _computes(model, card, workdir.file(ONNX_NAME), options):
        step(f"{ONNX_NAME} is recorded as made from this model but does not compute it; exporting again")
        redo_onnx = True
    if not redo_checkpoint and not _same_weights(model, workdir.file(CHECKPOINT_NAME)):
        redo_checkpoint = True
    if redo_onnx or redo_checkpoint:
        workdir.begin("export", outputs)
    proto = None
    if redo_onnx:
        result, proto = _export_checked(model, card, workdir, options, step)
        workdir.set("model", {"card": card.to_dict()})
        workdir.record(ONNX_NAME, inputs=inputs, options=recorded,
                       extra={"checks": [asdict(c) for c in result.checks],
                              "seconds": result.seconds})
    if redo_checkpoint:
        save_checkpoint(workdir.file(CHECKPOINT_NAME), model, card)
        workdir.record(CHECKPOINT_NAME, inputs=inputs, options={})
    if fp16:
        fp16_inputs = {ONNX_NAME: workdir.sha256(ONNX_NAME)}
        fp16_options = {"keep_io_types": True}
        if force or not workdir.is_fresh(FP16_NAME, fp16_inputs, fp16_options):
            step("writing the FP16 ONNX (onnxconverter-common, fp32 inputs and outputs)")
            workdir.begin("export", outputs)
            start = time.perf_counter()
            digest = write_fp16(proto if proto is not None else load_onnx(workdir.file(ONNX_NAME)),
                                workdir.file(FP16_NAME))
            workdir.remember(FP16_NAME, digest)
            workdir.record(FP16_NAME, inputs=fp16_inputs, options=fp16_options)
            result.seconds["fp16"] = time.perf_counter() - start
    # completion last: model.onnx, model.pt and model.fp16.onnx are trusted only as this set
    workdir.complete("export", outputs, made_from=[],
                     remake=f"resnet-edge export <model or checkpoint> --out {workdir.path} --force")
    return result


def prepare_export(source: str, request: dict, *, default_exporter: str = "dynamo",
                   notice: Callable[[str], None] = lambda message: None):
    """(model, card, ExportOptions) from the export options `export` and `pipeline` share:
    weights, weights_dir, arch, num_classes, exporter, opset, the batch profile, the
    preprocessing overrides, fold_normalization (mean and std into the graph) and softmax
    (a Softmax at the end). A plain state dict that says nothing of its preprocessing gets a
    `notice` that the architecture's default is used."""
    from ..zoo import VARIANTS, load_model
    options = ExportOptions(request.get("exporter") or default_exporter, request.get("opset"),
                            request.get("max_batch", 32), request.get("min_batch", 1),
                            request.get("opt_batch"), request.get("batch")).resolved()
    overrides = {key: request[key] for key in ("input_size", "resize", "mean", "std", "interpolation")
                 if request.get(key) is not None}
    if "input_size" in overrides and "resize" not in overrides:
        overrides["resize"] = overrides["input_size"]  # a new size with no resize: no crop
    weights = request.get("weights")
    if weights is None and source in VARIANTS:
        weights = "DEFAULT" if VARIANTS[source].family == "imagenet" else "none"
    model, card = load_model(source, weights=weights, arch=request.get("arch"),
                             num_classes=request.get("num_classes"), preprocess=overrides,
                             weights_dir=request.get("weights_dir"))
    if request.get("fold_normalization"):
        from ..zoo import fold_normalization
        model, card = fold_normalization(model, card)
    if request.get("softmax"):
        from ..zoo import add_softmax
        model, card = add_softmax(model, card)
    if card.weights.startswith("checkpoint:") and not overrides:
        p = card.preprocess
        notice(f"{source} has no model card, so it gets {card.arch}'s default preprocessing "
               f"({p.input_size} px crop of {p.resize}, mean {list(p.mean)}, std {list(p.std)}); "
               "give --input-size, --resize, --mean and --std if it was trained otherwise")
    return model, card, options


def export_profile(workdir: str | Path) -> dict:
    """The batch profile model.onnx was exported with ({"min", "opt", "max", "static"}), from
    the work dir's record of it: the one record build, bundle and every runtime follow."""
    options = open_dir(workdir).manifest["files"].get(ONNX_NAME, {}).get("options") or {}
    try:
        return _recorded_profile(options)
    except (TypeError, BadInput):
        raise BadInput(f"{Path(workdir) / 'manifest.json'} records no usable batch profile for "
                       f"{ONNX_NAME}; export it again") from None


def _recorded_profile(options: dict) -> dict:
    """The batch profile export options (a manifest's record, a bare file's metadata) say,
    checked as export checks its own (TypeError or BadInput where they could not be export's)."""
    known = {k: options[k] for k in ("exporter", "opset", "max_batch", "min_batch", "opt_batch",
                                     "batch") if k in options}
    return ExportOptions(**known).resolved().profile


ONNX_FILE_KEY = "onnx_file"  # a work dir made from a bare ONNX file: no PyTorch model in it


def workdir_from_onnx(onnx_file: str | Path, scratch: str | Path) -> Path:
    """A work directory in `scratch` around a bare ONNX file that resnet-edge exported: its card
    and batch profile from the file's metadata, model.fp16.onnx converted from it, and no
    PyTorch model, so ONNX Runtime's fp32 run of the file is the reference. A file without a
    card is refused saying what is missing and how to supply it."""
    onnx_file, scratch = Path(onnx_file), Path(scratch)
    proto = load_onnx(onnx_file)
    card = read_card(proto)
    options = read_export_options(proto)
    if card is None or not options:
        missing = "model card (preprocessing, classes)" if card is None else "batch profile"
        raise BadInput(f"{onnx_file} carries no resnet-edge {missing} in its metadata, which says "
                       "how to feed it: export the model with `resnet-edge export <checkpoint or "
                       "zoo name> --out DIR` (with --mean/--std/--input-size for a plain state "
                       "dict) and give DIR or DIR/model.onnx")
    options = {k: v for k, v in options.items() if k != "resnet_edge"}
    _held_to_graph(onnx_file, proto, card, options)
    wd = WorkDir(scratch)
    wd.begin("export", [ONNX_NAME, FP16_NAME])
    wd.remember(ONNX_NAME, write_bytes_atomic(wd.file(ONNX_NAME), onnx_file.read_bytes()))
    wd.remember(FP16_NAME, write_fp16(proto, wd.file(FP16_NAME)))
    inputs = {ONNX_FILE_KEY: str(onnx_file)}
    wd.record(ONNX_NAME, inputs=inputs, options=options)
    wd.record(FP16_NAME, inputs=inputs, options={"keep_io_types": True})
    wd.set(ONNX_FILE_KEY, str(onnx_file))
    wd.complete("export", outputs=[ONNX_NAME, FP16_NAME], made_from=[],
                remake=f"give {onnx_file} again")
    return scratch


def _held_to_graph(onnx_file: Path, proto: onnx.ModelProto, card, options: dict) -> None:
    """A bare file's metadata is what the file says of itself: its batch profile must be one
    export could have written (whole numbers, in order) and its card's classes as many as the
    graph's output is wide, or every row would be judged on a model the file is not."""
    try:
        _recorded_profile(options)
    except (TypeError, BadInput) as exc:
        raise BadInput(f"{onnx_file}'s batch profile in its metadata is unusable ({exc}); export "
                       "it again") from None
    dims = proto.graph.output[0].type.tensor_type.shape.dim if proto.graph.output else []
    width = dims[-1].dim_value if dims else 0
    if width and width != card.num_classes:
        raise BadInput(f"{onnx_file}'s metadata says {card.num_classes} classes, but its graph "
                       f"outputs {width}; export it again")


def open_workdir(workdir: str | Path):
    """(card, torch model) from a work directory that `export` made, or a clear error; the
    model is None in a work dir made from a bare ONNX file (workdir_from_onnx)."""
    onnx_path = Path(workdir) / ONNX_NAME
    if not onnx_path.exists():
        raise BadInput(f"{workdir} has no {ONNX_NAME}; run `resnet-edge export ... --out {workdir}` first")
    wd = open_dir(workdir)
    if wd.manifest.get(ONNX_FILE_KEY):
        wd.vouch(ONNX_NAME, f"give {workdir} again")
        return read_card(onnx_path), None
    if not wd.file(CHECKPOINT_NAME).exists():
        raise BadInput(f"{workdir} has no {CHECKPOINT_NAME} for the PyTorch reference; re-run export")
    for name in (ONNX_NAME, CHECKPOINT_NAME):  # the reference and the ONNX must be one export
        wd.vouch(name, f"resnet-edge export <model or checkpoint> --out {workdir} --force")
    card = read_card(onnx_path)
    if card is None:
        raise BadInput(f"{onnx_path} carries no resnet-edge model card; export it with resnet-edge")
    model, _ = load_checkpoint(wd.file(CHECKPOINT_NAME))
    return card, model


def check_batch_sizes(profile: dict, sizes, what: str) -> None:
    """Refuse, in one line, batch sizes the exported model cannot take."""
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int):
            raise BadInput(f"{what} {size!r} is not a whole number")
    outside = [s for s in sizes if not profile["min"] <= s <= profile["max"]]
    if outside:
        allowed = (f"only {profile['max']} (a static export)" if profile["static"] else
                   f"{profile['min']}..{profile['max']}")
        raise BadInput(f"{what} {outside[0]} is outside the model's batch profile: it takes "
                       f"{allowed}; export with --batch or --min-batch/--max-batch to change it")


def _computes(model, card, onnx_path: Path, options: ExportOptions) -> bool:
    """Whether the ONNX file gives this model's outputs (the export's own check, rerun)."""
    try:
        checks = compare_with_onnxruntime(model, onnx_path, card.preprocess.input_shape,
                                          check_sizes(options.profile))
    except Exception:  # noqa: BLE001 (a file that does not even load does not compute it)
        return False
    return all(c.passed for c in checks)


def _same_weights(model, checkpoint: Path) -> bool:
    try:
        state, _ = read_checkpoint(checkpoint)
    except Exception:  # noqa: BLE001 (unreadable: not this model's checkpoint)
        return False
    mine = model.state_dict()
    return state.keys() == mine.keys() and all(torch.equal(state[k], mine[k].cpu()) for k in mine)


def _export_checked(model, card, workdir: WorkDir, options: ExportOptions,
                    step) -> tuple[ExportResult, onnx.ModelProto]:
    seconds = {}
    step(f"exporting {card.arch} ({options.exporter}, opset {options.opset})")
    start = time.perf_counter()
    proto = export_onnx(model, card.preprocess.input_shape, options)
    write_metadata(proto, card, asdict(options))
    data = proto.SerializeToString()
    seconds["export"] = time.perf_counter() - start

    step("checking with onnx.checker and ONNX Runtime")
    start = time.perf_counter()
    run_checker(data)
    checks = compare_with_onnxruntime(model, data, card.preprocess.input_shape,
                                      check_sizes(options.profile))
    seconds["checks"] = time.perf_counter() - start
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = max(failed, key=lambda c: (c.nonfinite, c.max_abs_diff))
        nan = f"{worst.nonfinite} NaN or inf logits, " if worst.nonfinite else ""
        raise GateFailed(f"ONNX Runtime disagrees with PyTorch at batch {worst.batch}: {nan}max "
                         f"abs diff {worst.max_abs_diff:.3g} (limit 1e-3), top-1 agreement "
                         f"{worst.top1_agreement:.1%}; model.onnx was not written")
    workdir.remember(ONNX_NAME, write_bytes_atomic(workdir.file(ONNX_NAME), data))
    return ExportResult(workdir.file(ONNX_NAME), skipped=False, checks=checks, seconds=seconds), proto


def write_fp16(model: onnx.ModelProto, dst: Path) -> str:
    """FP16 weights and compute with FP32 inputs/outputs (Casts at the edges), metadata kept;
    `model` is converted in place. Returns the sha256 of the bytes written.

    Also makes the int8 model's float parts fp16 (model.int8-fp16.onnx, which only strongly
    typed TensorRT builds, whose parsers read opset 19 and up): its Q/DQ scales become fp16,
    which QuantizeLinear takes from opset 19, so an older int8 model is raised to opset 19
    first. Left at 17, its Q/DQ pairs stayed fp32 behind Casts, and a Cast between
    DequantizeLinear and Conv keeps TensorRT from running that Conv in int8.
    """
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 19 and any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        model = version_converter.convert_version(model, 19)
    blocked = float16.DEFAULT_OP_BLOCK_LIST
    # dynamo writes every intermediate type, and shape inference would only serialize the model
    # again to find them; TorchScript writes some, and the converter needs them all to put Casts
    # between fp16 and the fp32 Q/DQ pairs
    typed = {v.name for v in (*model.graph.value_info, *model.graph.output)}
    all_typed = all(name in typed for node in model.graph.node for name in node.output if name)
    with warnings.catch_warnings():  # per-tensor notes about values clamped to the fp16 range
        warnings.simplefilter("ignore")
        proto = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked,
                                                 disable_shape_infer=all_typed)
    run_checker(proto, full=False)  # a mechanical conversion of a model that passed the full check
    return write_bytes_atomic(dst, proto.SerializeToString())


__all__ = ["open_workdir", "workdir_from_onnx", "ExportOptions", "ExportResult", "export_model", "export_onnx", "read_card",
           "export_profile", "check_batch_sizes", "prepare_export",
           "write_fp16", "ONNX_NAME", "FP16_NAME", "CHECKPOINT_NAME"]
