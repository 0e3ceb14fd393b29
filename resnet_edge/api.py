"""The Python API: what the commands do, for notebooks and other tools, with the result
objects the commands print. Every function checks its input as the command does and raises
resnet_edge.errors.BadInput (the command's exit 2), GateFailed (exit 1) or MissingBackend
(exit 3) with the same one-line message.

    from resnet_edge import api

    model, card = api.load_model("resnet18", weights="none", num_classes=10)
    api.export(model, card, "artifacts/r18")                   # ExportResult
    api.calibrate("artifacts/r18", "images:/data/calib")      # CalibrationResult
    report = api.parity("artifacts/r18", "imagefolder:/data/val", backends=["torch", "ort"])
    report["summary"]["passed"]                                # what parity --json writes
    api.bench("artifacts/r18", [("ort", "fp32")], [1, 8])      # what bench --json writes
    api.bundle("artifacts/r18", "jetpack6", data="imagefolder:/data/val")   # BundleResult
"""

from __future__ import annotations

import os
from pathlib import Path

from .calibration import CalibrationResult, calibrate
from .errors import BadInput
from .deploy import BundleResult
from .export import ExportOptions, ExportResult, export_model as export
from .parity.gates import Thresholds, load_thresholds
from .zoo import ModelCard, load_model

PRECISIONS = ("fp32", "fp16", "int8", "int8-fp16")


def parity(workdir: str | Path, data: str | None = None, *,
           backends: list[str] = ("torch", "ort", "trt"), precisions: list[str] = PRECISIONS,
           thresholds: dict[str, Thresholds] | None = None, **options) -> dict:
    """The parity report (what `parity --json` writes) of `workdir` on `data` (None: the
    model's own built-in dataset, where it has one). `options`: limit, batch_size, device,
    agreement ("raw" or "decisive") as the command takes them."""
    from .parity.run import run_parity
    return run_parity(_path(workdir, "workdir"), data, backends=backends, precisions=precisions,
                      thresholds=thresholds or load_thresholds(), explicit=True, **options)


def bench(workdir: str | Path, pairs: list[tuple[str, str]], batch_sizes: list[int] | None = None,
          *, iterations: int = 50, warmup: int = 10, device: str = "auto") -> dict:
    """Latency of each (backend, precision) at each batch size (what `bench --json` writes);
    batch sizes default to the model's profile (min, opt, max)."""
    from .bench import run_bench
    from .parity.run import check_pairs
    check_pairs(pairs)
    return run_bench(_path(workdir, "workdir"), list(pairs), batch_sizes, iterations=iterations,
                     warmup=warmup, device=device, cpu_fp16=("torch", "fp16") in map(tuple, pairs))


def bundle(workdir: str | Path, target: str = "jetpack6", out: str | Path | None = None, *,
           data: str | None = None, **options) -> BundleResult:
    """The device bundle (what `bundle` writes), golden inputs from `data` (None: the model's
    own built-in dataset). `options`: golden, thresholds, sign, accelerator,
    classifier_threshold, release as `make_bundle` takes them."""
    from .deploy import make_bundle
    return make_bundle(_path(workdir, "workdir"), target, out, eval_spec=data, **options)


def _path(value, name: str) -> Path:
    """A path argument as the command takes it (a str or os.PathLike), or BadInput saying so."""
    if not isinstance(value, (str, os.PathLike)):
        raise BadInput(f"{name} {value!r} is not a path; give a folder as a str or Path")
    return Path(value)


__all__ = ["load_model", "export", "calibrate", "parity", "bench", "bundle", "load_thresholds",
           "ExportOptions", "ExportResult", "CalibrationResult", "BundleResult", "ModelCard",
           "Thresholds"]
