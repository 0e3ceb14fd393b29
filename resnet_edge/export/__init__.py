"""torch -> ONNX: export, embed the ModelCard, check, record in the manifest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import onnx
from torch import nn

from ..artifacts import WorkDir, atomic_path, ensure_writable_dir
from ..errors import GateFailed
from ..zoo import ModelCard
from .checks import BatchCheck, check_batches, compare_with_onnxruntime, run_checker
from .metadata import read_card, write_metadata
from .torch_to_onnx import ExportOptions, export_onnx

ONNX_NAME = "model.onnx"


@dataclass
class ExportResult:
    path: Path
    skipped: bool
    checks: list[BatchCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def export_model(model: nn.Module, card: ModelCard, out_dir: str | Path,
                 options: ExportOptions = ExportOptions(), *, force: bool = False,
                 step: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Write `out_dir/model.onnx` and record it, unless the same inputs already made it.

    The file appears only after the checker and the ONNX Runtime comparison pass; on any
    failure or interruption no model.onnx is left behind.
    """
    options = options.resolved()
    workdir = WorkDir(ensure_writable_dir(out_dir))
    inputs = {"card": card.to_dict()}
    recorded = asdict(options)
    if not force and workdir.is_fresh(ONNX_NAME, inputs, recorded):
        return ExportResult(workdir.file(ONNX_NAME), skipped=True)

    seconds = {}
    with atomic_path(workdir.file(ONNX_NAME)) as tmp:
        step(f"exporting {card.arch} ({options.exporter}, opset {options.opset})")
        start = time.perf_counter()
        export_onnx(model, card.preprocess.input_shape, tmp, options)
        proto = onnx.load(tmp)
        write_metadata(proto, card, recorded)
        onnx.save(proto, tmp)
        seconds["export"] = time.perf_counter() - start

        step("checking with onnx.checker and ONNX Runtime")
        start = time.perf_counter()
        run_checker(tmp)
        checks = compare_with_onnxruntime(model, tmp, card.preprocess.input_shape,
                                          check_batches(options.max_batch))
        seconds["checks"] = time.perf_counter() - start
        failed = [c for c in checks if not c.passed]
        if failed:
            worst = max(failed, key=lambda c: c.max_abs_diff)
            raise GateFailed(f"ONNX Runtime disagrees with PyTorch at batch {worst.batch}: max abs "
                             f"diff {worst.max_abs_diff:.3g} (limit 1e-3), top-1 agreement "
                             f"{worst.top1_agreement:.1%}; model.onnx was not written")
    workdir.set("model", {"card": card.to_dict()})
    workdir.record(ONNX_NAME, inputs=inputs, options=recorded,
                   extra={"checks": [asdict(c) for c in checks], "seconds": seconds})
    return ExportResult(workdir.file(ONNX_NAME), skipped=False, checks=checks, seconds=seconds)


__all__ = ["ExportOptions", "ExportResult", "export_model", "export_onnx", "read_card",
           "ONNX_NAME"]
