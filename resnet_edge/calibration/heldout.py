"""Held-out images and the judge that scores int8 models on them: top-1 (or agreement with
fp32 where they have no labels) of models quantized from cached ranges, layer sensitivity, and
the final check of what calibrate wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import batches
from ..runtime.ort import make_session
from .qdq import load_ranges, quantize


@dataclass
class Held:
    inputs: np.ndarray
    labels: np.ndarray | None
    indices: list[int] = field(default_factory=list)  # in the source


def holdout_images(source, card, inputs_indices, size: int) -> Held | None:
    """Images of the calibration source that calibration did not use, for sensitivity."""
    used = set(inputs_indices)
    rest = [i for i in range(len(source)) if i not in used][:size]
    if not rest:
        return None
    xs, ys = [], []
    for x, y in batches(source, card.preprocess, 128, indices=rest):
        xs.append(x.numpy())
        ys.append(y.numpy())
    labels = np.concatenate(ys)
    return Held(np.concatenate(xs), labels if source.has_labels else None, rest)


class Evaluator:
    """Top-1 on the held-out images (agreement with fp32 when they have no labels), of the fp32
    model and of int8 models quantized from the cached ranges."""

    def __init__(self, fp32, held: Held | None, recipe, scratch: Path, ranges_path, method,
                 layers: dict[str, str], ranges: dict[str, tuple[float, float]], always: list[str] = ()):
        self.fp32, self.held, self.recipe, self.scratch = fp32, held, recipe, scratch
        self.always = list(always)  # left in float in every model judged (--float-classifier)
        self.layers = {n: m for n, m in layers.items() if n not in self.always}
        self.ranges = ranges
        self.ranges_path, self.method = ranges_path, method
        self.reference = self._logits(make_session(fp32)) if held is not None else None
        self.target = held.labels if held is not None and held.labels is not None else (
            self.reference.argmax(1) if self.reference is not None else None)
        self.fp32_top1 = float((self.reference.argmax(1) == self.target).mean()) if held else None

    def use(self, ranges_path: Path, method: str) -> None:
        """Judge int8 models quantized from another method's ranges from here on."""
        self.ranges_path, self.method, self.ranges = ranges_path, method, load_ranges(ranges_path)

    def _logits(self, session) -> np.ndarray:
        """The held-out images' logits, in batches the model takes: a static-batch model's last
        batch padded with zeros and the padding's logits dropped."""
        first = session.get_inputs()[0]
        static = isinstance(first.shape[0], int)
        size = first.shape[0] if static else 128
        images, out = self.held.inputs, []
        for i in range(0, len(images), size):
            batch = images[i:i + size]
            pad = np.zeros((size - len(batch) if static else 0, *batch.shape[1:]), batch.dtype)
            out.append(session.run(None, {first.name: np.concatenate([batch, pad])})[0][:len(batch)])
        return np.concatenate(out)

    def _int8_logits(self, path: Path | bytes) -> np.ndarray:
        # The tensorrt recipe is judged by the numerics TensorRT will run (Q/DQ as written),
        # the cpu recipe by ORT's fused CPU kernels that will ship.
        return self._logits(make_session(path, disable_qdq_fusion=self.recipe == "tensorrt"))

    def logits(self, excluded: list[str], fp32: Path | None = None) -> np.ndarray:
        """The held-out logits of the int8 model quantized from `fp32` (the work dir's, or a
        QAT-tuned copy) with `excluded` left in float."""
        model = quantize(fp32 or self.fp32, self.scratch / "trial.onnx", recipe=self.recipe,
                         method=self.method, ranges_path=self.ranges_path,
                         nodes_to_exclude=[*self.always, *excluded], ranges=self.ranges)
        return self._int8_logits(model.SerializeToString())

    def top1(self, excluded: list[str], fp32: Path | None = None) -> float:
        return float((self.logits(excluded, fp32).argmax(1) == self.target).mean())

    def sensitivity(self, step) -> list[dict]:
        """Each layer quantized alone, the rest in float: top-1 drop and logit RMS error on
        the held-out images; ranked by drop, then by error (which still ranks layers when the
        set is too easy for any single layer to flip a prediction)."""
        layers = self.layers
        rows = []
        for i, (layer, module) in enumerate(layers.items()):
            step(f"sensitivity {i + 1}/{len(layers)}: {module or layer}")
            logits = self.logits([other for other in layers if other != layer])
            top1 = float((logits.argmax(1) == self.target).mean())
            rows.append({"layer": layer, "module": module, "top1": top1,
                         "drop_pt": (self.fp32_top1 - top1) * 100,
                         "logit_rmse": float(np.sqrt(np.mean((logits - self.reference) ** 2)))})
        return sorted(rows, key=lambda r: (-r["drop_pt"], -r["logit_rmse"]))

    def score(self, int8_path: Path) -> dict:
        top1 = float((self._int8_logits(int8_path).argmax(1) == self.target).mean())
        return {"images": len(self.held.inputs), "labelled": self.held.labels is not None,
                "fp32_top1": self.fp32_top1, "int8_top1": top1,
                "drop_pt": (self.fp32_top1 - top1) * 100}
