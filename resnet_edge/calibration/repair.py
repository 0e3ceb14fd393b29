"""The repair loop of `calibrate --max-accuracy-drop-pt` and the quantization-aware
fine-tuning it ends with (also the `qat` command): recipes in order of what they cost on the
device, each judged on held-out labelled images, the first that holds kept."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..data import batches
from ..errors import BadInput
from . import qat
from .qdq import METHODS


def repair_loop(evaluate, budget: float, method: str, ranges_of: Callable[[str], Path],
            step: Callable[[str], None], max_float_layers: int | None = None,
            tune: Callable[[], tuple[Path, Path, dict]] | None = None,
            tune_only: bool = False) -> tuple[str, list[str], dict, tuple[Path, Path] | None]:
    """The repair loop: recipes tried in order of what they cost on the device, stopping at the
    first whose held-out top-1 drop is within `budget` points: the chosen method; the other
    methods; then, from the method that lost least, the most sensitive layers left in float,
    fewest first (at most `max_float_layers`); then quantization-aware fine-tuning with every
    layer in int8 (`tune()`: the tuned fp32 ONNX file, its learned ranges and its record).
    Returns (method kept, layers left in float, the record of every step, the tuned file and
    ranges kept, or None). With no
    labelled held-out images nothing can be judged, and the chosen method is kept as it is.
    Where no step holds, the step that lost least is kept and the record says so.
    `tune_only` (the qat command): fine-tuning alone, kept whatever it loses."""
    if evaluate.held is None or evaluate.held.labels is None:
        why = ("no held-out images are left" if evaluate.held is None else
               "the held-out images have no labels")
        return method, [], {"budget_pt": budget, "met": None, "steps": [],
                            "kept": f"{method} calibration, not judged: {why}"}, None
    steps: list[dict] = []
    tuned: dict[str, tuple[Path, Path]] = {}

    def judge(name: str, used: str, excluded: list[str], fp32: Path | None = None, **cost) -> bool:
        top1 = evaluate.top1(excluded, fp32)
        drop = round((evaluate.fp32_top1 - top1) * 100, 9)  # 1 image in 300 is 1/3 pt, not 0.33..4
        steps.append({"step": name, "method": used, "top1": top1, "drop_pt": drop,
                      "float_layers": list(excluded),
                      "float_modules": [evaluate.layers.get(n) or n for n in excluded],
                      **cost, "holds": drop <= budget})
        if fp32 is not None:
            tuned[name] = (fp32, evaluate.ranges_path)
        step(f"{name}: top-1 {top1:.2%} ({drop:+.2f} pt; budget {budget:g})")
        return drop <= budget

    def kept(row: dict) -> tuple[str, list[str], dict, tuple[Path, Path] | None]:
        return row["method"], row["float_layers"], {"budget_pt": budget, "met": row["holds"],
                                                    "steps": steps, "kept": row["step"]}, tuned.get(row["step"])

    if tune_only:
        path, learned, record = tune()
        evaluate.use(learned, method)
        judge(f"{method}, quantization-aware fine-tuning ({record['epochs']} epochs)", method, [], path,
              qat=record)
        return kept(steps[-1])
    if judge(f"{method} calibration", method, []):
        return kept(steps[-1])
    for other in (m for m in METHODS if m != method):
        evaluate.use(ranges_of(other), other)
        if judge(f"{other} calibration", other, []):
            return kept(steps[-1])
    best = min(steps, key=lambda r: r["drop_pt"])
    evaluate.use(ranges_of(best["method"]), best["method"])
    if max_float_layers is None or max_float_layers > 0:
        excluded: list[str] = []
        for row in evaluate.sensitivity(step)[:max_float_layers]:
            excluded.append(row["layer"])
            if judge(f"{best['method']}, {len(excluded)} layer(s) left in float ("
                     f"{', '.join(evaluate.layers.get(n) or n for n in excluded)})", best["method"], excluded):
                return kept(steps[-1])
    if tune is not None:
        try:
            path, learned, record = tune()
            evaluate.use(learned, best["method"])
        except BadInput as exc:  # no PyTorch model to fine-tune (a bare ONNX file)
            steps.append({"step": "quantization-aware fine-tuning", "skipped": str(exc), "holds": False,
                          "method": best["method"], "top1": None, "drop_pt": None, "float_layers": [],
                          "float_modules": []})
        else:
            if judge(f"{best['method']}, quantization-aware fine-tuning ({record['epochs']} epochs)",
                     best["method"], [], path, qat=record):
                return kept(steps[-1])
    judged = [r for r in steps if r["drop_pt"] is not None]
    return kept(min(judged, key=lambda r: (r["drop_pt"], len(r["float_layers"]))))


def training_indices(source, held) -> list[int]:
    """The source's images that judge nothing: all but the held-out ones."""
    judging = set(held.indices)
    return [i for i in range(len(source)) if i not in judging]


def fine_tune_onnx(workdir: Path, fp32_model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                   source, card, train: list[int], held, *, epochs: int,
                   lr: float = qat.LEARNING_RATE, step: Callable[[str], None] = lambda m: None
                   ) -> tuple[onnx.ModelProto, dict[str, tuple[float, float]], dict]:
    """The work dir's PyTorch model fine-tuned quantization-aware on `train` (source indices),
    the best epoch by `held`, as a copy of the fp32 ONNX model with the tuned weights; its
    learned activation ranges; and the record of it. BadInput where the work dir has no
    PyTorch model."""
    from ..export import CHECKPOINT_NAME
    from ..zoo import load_model
    checkpoint = Path(workdir) / CHECKPOINT_NAME
    if not checkpoint.exists():
        raise BadInput(f"no PyTorch model ({CHECKPOINT_NAME}) in {workdir} to fine-tune")
    if held is None or held.labels is None or not train:
        raise BadInput("quantization-aware fine-tuning needs labelled images to train on and others to judge by")
    model, _ = load_model(str(checkpoint))
    order = np.random.default_rng(0)

    def train_batches(epoch: int):
        for x, y in batches(source, card.preprocess, qat.BATCH_SIZE, indices=order.permutation(train).tolist()):
            yield x, y

    steps = -(-len(train) // qat.BATCH_SIZE)
    tuned = qat.fine_tune(model, fp32_model, ranges, train_batches, steps, (held.inputs, held.labels),
                          epochs=epochs, lr=lr,
                          progress=lambda epoch, top1: step(f"quantization-aware fine-tuning, epoch {epoch} of "
                                                            f"{epochs}: held-out top-1 {top1:.2%}"))
    record = {"epochs": epochs, "lr": lr, "train_images": len(train), "best_epoch": tuned.best_epoch,
              "start_top1": tuned.start_top1, "best_top1": tuned.best_top1, "history": tuned.history}
    return qat.tuned_onnx(fp32_model, tuned.model), tuned.ranges, record
