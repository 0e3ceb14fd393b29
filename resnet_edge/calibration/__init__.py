"""calibrate: calibration data -> ranges -> INT8 Q/DQ ONNX (+ TensorRT calibration cache),
with optional per-layer sensitivity and automatic exclusion of the most sensitive layers."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..artifacts import WorkDir, atomic_path, calibrate_command, write_bytes_atomic, write_json_atomic
from ..data import RandomSource, data_for, match_classes, open_data, trained_on
from ..errors import BadInput, DataWarning, number_in
from ..export import CHECKPOINT_NAME, ONNX_NAME, read_card, write_fp16
from ..export.metadata import QUANT_KEY, load_onnx, module_of
from ..parity.gates import Thresholds, load_thresholds
from ..quiet import quiet
from ..runtime.trt_rules import INT8_FP16_FILE
from .dataset import DEFAULT_SAMPLES, balanced_indices, calibration_inputs, overlaps
from .qdq import (CPU_WEIGHT_BITS, METHODS, RECIPES, any_batch, compute_ranges, load_ranges, quantize,
                  save_ranges)
from . import qat
from .heldout import Evaluator, holdout_images
from .repair import fine_tune_onnx, repair_loop, training_indices
from .trt_cache import write_cache

INT8_NAME = "model.int8.onnx"
INT8_FP16_NAME = INT8_FP16_FILE
RANGES_NAME = "calibration.ranges.json"
SENSITIVITY_NAME = "calibration.sensitivity.json"  # the --sensitivity ranking, for later reading
CACHE_NAME = "calibration.cache"
ANALYSIS_HOLDOUT = 500  # held-out images for --sensitivity and --exclude auto


@dataclass
class CalibrationResult:
    path: Path
    per_class: dict[str, int]
    samples: int
    warnings: list[str] = field(default_factory=list)
    holdout: dict | None = None
    sensitivity: list[dict] | None = None
    excluded: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)  # by this run, in the order written
    data: str = ""  # the data spec calibrated on, the default resolved
    method: str = ""  # the method kept (the repair loop may keep another than asked)
    repair: dict | None = None  # --max-accuracy-drop-pt: every step tried, and the one kept


def calibrate(workdir: str | Path, data_spec: str, *, samples: int = DEFAULT_SAMPLES,
              method: str = "entropy", recipe: str = "tensorrt", sensitivity: bool = False,
              exclude: str | None = None, holdout: int | None = None, eval_spec: str | None = None,
              tensorrt_version: str = "10.3.0", thresholds: dict[str, Thresholds] | None = None,
              max_accuracy_drop_pt: float | None = None, max_float_layers: int | None = None,
              qat_epochs: int = qat.DEFAULT_EPOCHS, fine_tune: bool = False,
              float_classifier: bool = False,
              step: Callable[[str], None] = lambda m: None) -> CalibrationResult:
    """`max_accuracy_drop_pt`: the repair loop (repair.repair_loop) tries recipes in order until the
    held-out top-1 drop is within it, leaving at most `max_float_layers` layers in float and
    fine-tuning `qat_epochs` epochs as its last step. `fine_tune` (the qat command): that
    fine-tuning alone, judged against `max_accuracy_drop_pt`. `float_classifier`: the final
    Gemm left in float throughout (TensorRT runs it in fp16 beside int8 convolutions, as
    ModelOpt's ONNX PTQ leaves it)."""
    if fine_tune and recipe != "tensorrt":
        raise BadInput("quantization-aware fine-tuning follows the tensorrt recipe's Q/DQ placement; "
                       "use --recipe tensorrt")
    if fine_tune and max_accuracy_drop_pt is None:
        max_accuracy_drop_pt = (thresholds or load_thresholds())["int8"].max_accuracy_drop_pt or 1.0
    if samples < 1:
        raise BadInput(f"--samples must be at least 1, got {samples}")
    if qat_epochs < 1:
        raise BadInput(f"--epochs must be at least 1, got {qat_epochs}")
    if max_accuracy_drop_pt is not None:
        number_in(max_accuracy_drop_pt, 0, 100, "--max-accuracy-drop-pt")
        if exclude:
            raise BadInput("--max-accuracy-drop-pt leaves layers in float itself when it must; "
                           "drop --exclude")
    if max_float_layers is not None and (max_accuracy_drop_pt is None or max_float_layers < 0):
        raise BadInput("--max-float-layers caps the repair loop: give it with --max-accuracy-drop-pt, "
                       f"as 0 or more (got {max_float_layers})")
    if holdout is None:  # a held-out check costs inference on every image: only where it decides
        deciding = sensitivity or exclude == "auto" or max_accuracy_drop_pt is not None
        holdout = ANALYSIS_HOLDOUT if deciding else 0
    if holdout < 0:
        raise BadInput(f"--holdout must be at least 0, got {holdout}")
    if method not in METHODS:
        raise BadInput(f"unknown --method {method!r}; use {', '.join(METHODS)}")
    if recipe not in RECIPES:
        raise BadInput(f"unknown --recipe {recipe!r}; use {', '.join(RECIPES)}")
    workdir = Path(workdir)
    fp32 = workdir / ONNX_NAME
    if not fp32.exists():
        raise BadInput(f"{workdir} has no {ONNX_NAME}; run `resnet-edge export ... --out {workdir}` first")
    wd = WorkDir(workdir)
    wd.vouch(ONNX_NAME, f"resnet-edge export <model or checkpoint> --out {workdir} --force")
    fp32_model = load_onnx(fp32)  # read once; every step below reuses it
    card = read_card(fp32_model)
    if card is None:
        raise BadInput(f"{fp32} carries no resnet-edge model card; export it with resnet-edge")
    weights = {i.name for i in fp32_model.graph.initializer}
    input_name = next(i.name for i in fp32_model.graph.input if i.name not in weights)
    layers = conv_layers(fp32_model)
    if exclude and exclude != "auto":
        exclude = ",".join(layer_names(exclude, layers))
    data_spec = data_for(card, "train", data_spec, "--data")
    if eval_spec is None and trained_on(card):
        eval_spec = f"{trained_on(card)}:test"
    source = open_data(data_spec, input_shape=card.preprocess.input_shape)
    match_classes(source, card.num_classes, card.class_names, f"the model ({card.arch})")
    if fine_tune and not (workdir / CHECKPOINT_NAME).exists():  # said before any calibrating
        raise BadInput(f"no PyTorch model ({CHECKPOINT_NAME}) in {workdir} to fine-tune; export it from "
                       "a checkpoint or a zoo name (a bare ONNX file cannot be fine-tuned)")
    if fine_tune and not source.has_labels:
        raise BadInput(f"{data_spec} has no labels: quantization-aware fine-tuning trains on labelled "
                       "images (imagefolder:PATH, a folder per class)")
    notes = []
    if eval_spec and overlaps(data_spec, eval_spec):
        notes.append(f"calibration data {data_spec} is the split parity evaluates on ({eval_spec}); "
                     "accuracy measured there will be optimistic")
    if isinstance(source, RandomSource):
        notes.append(f"{data_spec} is random noise: its ranges say nothing about real images, "
                     "so this int8 model will lose accuracy on them; calibrate on images the "
                     "model will see (images:PATH takes a plain folder)")
    if samples > len(source):
        notes.append(f"{data_spec} has {len(source)} images, fewer than --samples {samples}")
    for message in notes:  # said now, before minutes of calibrating, and kept in the result
        warnings.warn(message, DataWarning, stacklevel=2)
    judging = ("--sensitivity" if sensitivity else "--exclude auto" if exclude == "auto" else
               "--max-accuracy-drop-pt" if max_accuracy_drop_pt is not None else None)
    if judging and holdout == 0:  # said before calibrating, not after
        raise BadInput(f"{judging} judges layers on held-out images, and --holdout is 0; give --holdout")
    if judging and len(source) <= samples:
        raise BadInput(f"{data_spec} has {len(source)} images, all of them calibration's (--samples "
                       f"{samples}), so none are left to judge layers on for {judging}; use fewer "
                       "--samples or more data")

    step(f"preprocessing {min(samples, len(source))} calibration images")
    inputs, per_class = calibration_inputs(source, card.preprocess, samples)
    data_hash = hashlib.sha256(np.ascontiguousarray(inputs)).hexdigest()  # no copy of the images
    options = {"method": method, "samples": len(inputs), "data": data_spec}
    outputs = [RANGES_NAME, INT8_NAME, *([INT8_FP16_NAME] if recipe == "tensorrt" else []), CACHE_NAME]
    wd.begin("calibrate", outputs)
    written = []
    if recipe != "tensorrt":  # an fp16-float int8 model from an earlier recipe is not this one's
        wd.file(INT8_FP16_NAME).unlink(missing_ok=True)
    # onnxruntime.quantization logs advice on the root logger for every call, and the entropy
    # and percentile calibrators print their progress on stdout
    with quiet(""), tempfile.TemporaryDirectory() as scratch:
        # onnxruntime.quantization writes <model>-inferred.onnx beside its input: work on a copy;
        # and a static-batch export is measured by a copy that takes any batch (any_batch), so
        # every calibration and held-out image counts once, whatever the model's batch
        source_model = Path(scratch) / ONNX_NAME
        shutil.copyfile(fp32, source_model)
        free = any_batch(fp32_model)
        measured_model = source_model if free is fp32_model else Path(scratch) / "any-batch" / ONNX_NAME
        if free is not fp32_model:
            measured_model.parent.mkdir()
            onnx.save(free, str(measured_model))
        ranges_path = wd.file(RANGES_NAME)
        range_inputs = {ONNX_NAME: wd.sha256(ONNX_NAME), "calibration_sha256": data_hash,
                        "tensors": "all"}
        if not wd.is_fresh(RANGES_NAME, range_inputs, options):
            said = f"calibrating every tensor ({method}, {len(inputs)} images"
            step(f"{said})")

            shown = 0

            def progress(done: int, total: int) -> None:  # a line per tenth at most
                nonlocal shown
                if done == total or done - shown >= total / 10:
                    shown = done
                    step(f"{said}, {'two passes, ' if method != 'minmax' else ''}batch {done} of {total})")
            with atomic_path(ranges_path) as tmp:
                compute_ranges(measured_model, inputs, method, tmp, scratch, input_name, progress)
            wd.record(RANGES_NAME, inputs=range_inputs, options=options)
            written.append(ranges_path)
        ranges = load_ranges(ranges_path)

        held = holdout_images(source, card, inputs_indices=balanced_indices(source, samples), size=holdout)
        classifier = [n for n in layers if float_classifier and _is_classifier(fp32_model, n)]
        evaluate = Evaluator(measured_model, held, recipe, Path(scratch), ranges_path, method, layers,
                              ranges, always=classifier)
        ranking = evaluate.sensitivity(step) if sensitivity or exclude == "auto" else None
        if ranking is not None:
            write_json_atomic(wd.file(SENSITIVITY_NAME), {
                "method": method, "samples": len(inputs), "held_out_images": len(held.inputs),
                "fp32_top1": evaluate.fp32_top1, "layers": ranking})
            written.append(wd.file(SENSITIVITY_NAME))
        repair = tuned = None
        if max_accuracy_drop_pt is not None:
            def ranges_of(other: str) -> Path:  # another method's ranges, into the scratch folder
                if other == method:
                    return ranges_path
                path = Path(scratch) / f"ranges-{other}.json"
                if not path.exists():
                    step(f"calibrating every tensor ({other}, {len(inputs)} images)")
                    compute_ranges(measured_model, inputs, other, path, scratch, input_name)
                return path
            def tune() -> tuple[Path, Path, dict]:
                tuned_model, learned, record = fine_tune_onnx(workdir, fp32_model, evaluate.ranges, source, card,
                                                              training_indices(source, held), held,
                                                              epochs=qat_epochs, step=step)
                folder = Path(scratch) / "qat"
                folder.mkdir(exist_ok=True)
                onnx.save(tuned_model, str(folder / ONNX_NAME))
                save_ranges(evaluate.ranges_path, learned, folder / RANGES_NAME)
                return folder / ONNX_NAME, folder / RANGES_NAME, record
            kept, excluded, repair, tuned = repair_loop(evaluate, max_accuracy_drop_pt, method, ranges_of, step,
                                                    max_float_layers, tune, tune_only=fine_tune)
            if tuned is not None:  # the tuned weights, quantized with the learned scales
                source_model = tuned[0]
                with atomic_path(ranges_path) as tmp:
                    shutil.copyfile(tuned[1], tmp)
                options = {**options, "qat_epochs": qat_epochs}
                wd.record(RANGES_NAME, inputs=range_inputs, options=options)
                if ranges_path not in written:
                    written.append(ranges_path)
                ranges = load_ranges(ranges_path)
            if kept != method:  # the kept method's ranges are the work dir's ranges from here on
                with atomic_path(ranges_path) as tmp:
                    shutil.copyfile(ranges_of(kept), tmp)
                method = kept
                options = {**options, "method": method}
                wd.record(RANGES_NAME, inputs=range_inputs, options=options)
                if ranges_path not in written:
                    written.append(ranges_path)
                ranges = load_ranges(ranges_path)
        else:
            excluded = _exclusions(exclude, ranking, evaluate, thresholds or load_thresholds(), step)

        excluded = [*classifier, *(n for n in excluded if n not in classifier)]
        step(f"writing {INT8_NAME} ({recipe} recipe)")
        model = quantize(source_model, Path(scratch) / INT8_NAME, recipe=recipe, method=method,
                         ranges_path=ranges_path, nodes_to_exclude=excluded, ranges=ranges)
        info = {"recipe": recipe, "method": method, "samples": len(inputs), "data": data_spec,
                "calibration_sha256": data_hash, "excluded": excluded,
                "weight_bits": CPU_WEIGHT_BITS if recipe == "cpu" else 8,
                **({"repair": repair} if repair else {})}
        model.metadata_props.add(key=QUANT_KEY, value=json.dumps(info))
        onnx.checker.check_model(model)
        wd.remember(INT8_NAME, write_bytes_atomic(wd.file(INT8_NAME), model.SerializeToString()))
        wd.record(INT8_NAME, inputs=range_inputs, options={**options, "recipe": recipe,
                                                            "excluded": excluded},
                  extra={"per_class": per_class, **({"repair": repair} if repair else {})})
        if recipe == "tensorrt":
            step(f"writing {INT8_FP16_NAME} (float parts in fp16, for strongly typed TensorRT)")
            wd.remember(INT8_FP16_NAME, write_fp16(model, wd.file(INT8_FP16_NAME)))
            wd.record(INT8_FP16_NAME, inputs={INT8_NAME: wd.sha256(INT8_NAME)},
                      options={"keep_io_types": True})
        del model
        # layers left in float get no scale, so TensorRT's implicit INT8 keeps them in float too
        write_cache(cache_ranges(ranges, fp32_model, excluded), wd.file(CACHE_NAME), tensorrt_version)
        wd.record(CACHE_NAME, inputs=range_inputs,
                  options={**options, "tensorrt": tensorrt_version, "excluded": excluded})
        # completion last: the four files are trusted only together, and only from here on
        wd.complete("calibrate", outputs, made_from=[ONNX_NAME],
                    remake=calibrate_command(workdir, options, recipe))
        # the held-out check scores the very model just written, not a second quantization
        holdout_result = evaluate.score(wd.file(INT8_NAME)) if held is not None else None
    written += [wd.file(n) for n in outputs if n != RANGES_NAME] + [wd.file("manifest.json")]
    return CalibrationResult(wd.file(INT8_NAME), per_class, len(inputs), notes, holdout_result,
                             ranking, excluded, written, data_spec, method, repair)


def layer_names(names: str, layers: dict[str, str]) -> list[str]:
    """ONNX node names for a comma list of node names or module names (conv1, layer1.0.conv2,
    fc) as the sensitivity ranking shows them."""
    found = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        matches = [name] if name in layers else [n for n, module in layers.items() if module == name]
        if not matches:
            raise BadInput(f"--exclude names no Conv/Gemm layer {name!r}: give a module name "
                           f"({', '.join(list(filter(None, layers.values()))[:3])}, ...) or a node "
                           "name as the --sensitivity ranking shows them")
        found += [m for m in matches if m not in found]
    return found


def _exclusions(exclude, ranking, evaluate: Evaluator, thresholds, step) -> list[str]:
    if not exclude:
        return []
    if exclude != "auto":
        return [n.strip() for n in exclude.split(",") if n.strip()]
    gate = thresholds["int8"]
    excluded: list[str] = []
    for row in [None, *ranking]:
        if row is not None:
            excluded.append(row["layer"])
        step(f"checking the int8 gate with {len(excluded)} layer(s) left in float")
        top1 = evaluate.top1(excluded)
        drop = (evaluate.fp32_top1 - top1) * 100
        rel = top1 / evaluate.fp32_top1 * 100 if evaluate.fp32_top1 else 100.0
        if ((gate.max_accuracy_drop_pt is None or drop <= gate.max_accuracy_drop_pt)
                and (gate.min_relative_accuracy_pct is None or rel >= gate.min_relative_accuracy_pct)):
            return excluded
    return excluded


def _is_classifier(model: onnx.ModelProto, node_name: str) -> bool:
    """The Gemm whose output is (or, through a Softmax, makes) the model's output."""
    outputs = {o.name for o in model.graph.output}
    by_name = {n.name: n for n in model.graph.node}
    node = by_name[node_name]
    if node.op_type != "Gemm":
        return False
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    return node.output[0] in outputs or any(r.op_type == "Softmax" and r.output[0] in outputs for r in readers)


def conv_layers(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """Conv/Gemm node name -> the PyTorch module it came from (where the exporter says)."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    return {n.name: module_of(n) for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


def cache_ranges(ranges: dict[str, tuple[float, float]], model: onnx.ModelProto,
                 excluded: list[str]) -> dict[str, tuple[float, float]]:
    """The activation ranges TensorRT's cache should carry: no weights, and nothing on the
    inputs or outputs of a layer kept in float (a tensor without a scale stays in float)."""
    weights = {i.name for i in model.graph.initializer}
    skip = set(excluded)
    floating = {t for n in model.graph.node if n.name in skip for t in (*n.input, *n.output)}
    return {name: r for name, r in ranges.items() if name not in weights and name not in floating}
