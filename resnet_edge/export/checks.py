"""The checks every exported file passes before it is trusted: the ONNX checker, then ONNX
Runtime against PyTorch on seeded inputs at two batch sizes (the dynamic batch is exercised)
from one PyTorch pass: the batch-1 check compares against the first row of the larger batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import GateFailed
from ..metrics import LogitComparison
from ..runtime.ort import make_session
from .torch_to_onnx import INPUT_NAME

MAX_ABS_DIFF = 1e-3


@dataclass(frozen=True)
class BatchCheck:
    batch: int
    max_abs_diff: float
    top1_agreement: float
    nonfinite: int = 0  # NaN or inf logits from ONNX Runtime

    @property
    def passed(self) -> bool:
        return (self.nonfinite == 0 and self.max_abs_diff <= MAX_ABS_DIFF
                and self.top1_agreement == 1.0)


def run_checker(model: onnx.ModelProto | bytes | str | os.PathLike, *, full: bool = True) -> None:
    """onnx.checker; give it the serialized bytes where they exist, or it serializes again."""
    try:
        onnx.checker.check_model(model if isinstance(model, (onnx.ModelProto, bytes))
                                 else os.fspath(model), full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GateFailed(f"the exported ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from None


def compare_with_onnxruntime(model: nn.Module, onnx_model: bytes | str | os.PathLike,
                             input_shape: tuple[int, int, int], sizes: tuple[int, int] = (1, 5),
                             seed: int = 0) -> list[BatchCheck]:
    """ONNX Runtime at both `sizes` against one PyTorch pass at the larger one."""
    batch = max(sizes)
    session = make_session(onnx_model)
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model(x).numpy()
    if not np.isfinite(ref).all():
        raise GateFailed(f"PyTorch itself gives NaN or inf logits for seeded inputs at batch "
                         f"{batch}: the model is broken, so model.onnx was not written")
    results = []
    for size in sorted(set(sizes)):
        cand = session.run(None, {INPUT_NAME: x[:size].numpy()})[0]
        cmp = LogitComparison()
        cmp.update(ref[:size], cand)
        results.append(BatchCheck(size, cmp.max_abs, cmp.top1_agreement, cmp.nonfinite))
    return results


def check_sizes(profile: dict) -> tuple[int, int]:
    """(smallest, larger) batch to check: the profile's min, and up to 5 within it."""
    return profile["min"], max(profile["min"], min(5, profile["max"]))


__all__ = ["BatchCheck", "run_checker", "compare_with_onnxruntime", "check_sizes"]
