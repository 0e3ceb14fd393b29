"""The Python API: what the commands do, for notebooks and other tools, returning what their
`--json` writes (or the result object the command prints). Every function checks its input as
the command does and raises resnet_edge.errors.BadInput (the command's exit 2) or
MissingBackend (exit 3) with the same one-line message. Gates do not raise: `parity` and `bench`
return the report whatever its gates say, and `check(report)` raises GateFailed (exit 1) or
MissingBackend as the command would on it. Warnings (a skipped file, an optimistic split)
point at the caller's line.

    from resnet_edge import api

    model, card = api.load_model("resnet18", weights="none", num_classes=10)
    api.export(model, card, "artifacts/r18")                   # ExportResult
    api.calibrate("artifacts/r18", "images:/data/calib")      # CalibrationResult
    report = api.parity("artifacts/r18", "imagefolder:/data/val", backends=["torch", "ort"])
    api.check(report)                                          # GateFailed where a gate failed
    api.bench("artifacts/r18", [("ort", "fp32")], [1, 8])      # what bench --json writes
    made = api.bundle("artifacts/r18", "jetpack6", "dist", data="imagefolder:/data/val")
    api.verify(made.path, allow_unsigned=True)                 # what verify --json writes
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

from .calibration import CalibrationResult, calibrate as _calibrate
from .deploy import BundleResult
from .errors import BadInput, GateFailed, MissingBackend
from .export import ExportOptions, ExportResult, export_model as _export
from .parity.gates import Thresholds, load_thresholds
from .zoo import ModelCard, load_model

PRECISIONS = ("fp32", "fp16", "int8", "int8-fp16")


def _public(function):
    """Warnings raised anywhere inside `function` shown at the caller's line, not the library's."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = function(*args, **kwargs)
        for warning in caught:
            warnings.warn(warning.message, warning.category, stacklevel=2)
        return result
    return call


def _path(value, name: str) -> Path:
    """A path argument as the command takes it (a str or os.PathLike), or BadInput saying so."""
    if not isinstance(value, (str, os.PathLike)):
        raise BadInput(f"{name} {value!r} is not a path; give a folder as a str or Path")
    return Path(value)


@_public
def export(model, card: ModelCard, out: str | Path, options: ExportOptions = ExportOptions(),
           **kwargs) -> ExportResult:
    """The model to `out`/model.onnx (and fp16, checkpoint, manifest), checked against
    ONNX Runtime: what `export` writes."""
    return _export(model, card, _path(out, "out"), options, **kwargs)


@_public
def calibrate(workdir: str | Path, data: str, **options) -> CalibrationResult:
    """model.int8.onnx and calibration.cache from `data`, as `calibrate` makes them. `options`:
    samples, method, recipe, sensitivity, exclude, holdout as the command takes them."""
    return _calibrate(_path(workdir, "workdir"), data, **options)


@_public
def parity(workdir: str | Path, data: str | None = None, *,
           backends: list[str] = ("torch", "ort", "trt"), precisions: list[str] = PRECISIONS,
           thresholds: dict[str, Thresholds] | None = None, **options) -> dict:
    """The parity report (what `parity --json` writes) of `workdir` on `data` (None: the
    model's own built-in dataset, where it has one). `options`: limit, batch_size, device,
    agreement ("raw" or "decisive") as the command takes them. The backends given are named:
    `check` treats a row of one that cannot run as the command's exit 3."""
    from .parity.run import run_parity
    return run_parity(_path(workdir, "workdir"), data, backends=backends, precisions=precisions,
                      thresholds=thresholds or load_thresholds(), explicit=True,
                      named_backends=list(backends) if isinstance(backends, (list, tuple)) else backends,
                      **options)


@_public
def bench(workdir: str | Path, pairs: list[tuple[str, str]], batch_sizes: list[int] | None = None,
          *, iterations: int = 50, warmup: int = 10, device: str = "auto") -> dict:
    """Latency of each (backend, precision) at each batch size (what `bench --json` writes);
    batch sizes default to the model's profile (min, opt, max)."""
    from .bench import run_bench
    _check_pairs(pairs)
    return run_bench(_path(workdir, "workdir"), list(pairs), batch_sizes, iterations=iterations,
                     warmup=warmup, device=device, cpu_fp16=("torch", "fp16") in map(tuple, pairs))


def _check_pairs(pairs) -> None:
    """(backend, precision) pairs as bench takes them, each known (the reference included)."""
    from .parity.run import candidates
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise BadInput(f"pairs are a list of (backend, precision), e.g. [('ort', 'fp32')]; got {pairs!r}")
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise BadInput(f"{pair!r} is not a (backend, precision) pair, e.g. ('ort', 'fp32')")
        candidates([pair[0]], [pair[1]])


def check(report: dict) -> dict:
    """`report` (from `parity`) as the command judges it: GateFailed with the command's line where
    a gate failed, MissingBackend where a named backend could not run; else the report."""
    from .parity.gates import failed_gates
    summary = report["summary"]
    if summary["failed_gates"]:
        raise GateFailed(f"parity gates failed: {failed_gates(report['candidates'])}")
    if summary["explicit_backends_missing"]:
        raise MissingBackend("asked for but cannot run here: " + "; ".join(summary["explicit_backends_missing"]))
    return report


@_public
def bundle(workdir: str | Path, target: str = "jetpack6", out: str | Path | None = None, *,
           data: str | None = None, **options) -> BundleResult:
    """The device bundle, written as `bundle` writes it: <out>/<work dir>-<target>.tar.gz, where
    `out` is a folder (made if needed; the work dir when None), golden inputs from `data` (None:
    the model's own built-in dataset). `options`: golden, thresholds, sign, accelerator,
    classifier_threshold, release as `make_bundle` takes them."""
    from .deploy import make_bundle
    workdir = _path(workdir, "workdir")
    folder = _path(out, "out") if out is not None else workdir
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"out {folder} is a file; give the folder the bundle goes in")
    folder.mkdir(parents=True, exist_ok=True)
    return make_bundle(workdir, target, folder / f"{workdir.name}-{target}.tar.gz", eval_spec=data, **options)


@_public
def verify(bundle: str | Path, *, key: str | Path | None = None, allow_unsigned: bool = False,
           **options) -> dict:
    """The report `verify --json` writes for a bundle folder or .tar.gz. `options`:
    min_created, precisions, backend, iterations, device_dir, require_tensorrt. Its "passed"
    says whether the gates held (`exit_code` 1 where not), as for parity."""
    from .deploy.check import verify_path
    return verify_path(_path(bundle, "bundle"), key=key, allow_unsigned=allow_unsigned, **options)


@_public
def train(arch: str, data: str = "digits", out: str | Path | None = None, **options):
    """Train as `train` does; returns the TrainResult (model_path, card with its measured
    accuracy, history, seconds). `options`: the TrainConfig fields (epochs, batch_size, lr, ...)."""
    from .train import TrainConfig, train as run_training
    if not isinstance(arch, str) or not isinstance(data, str):
        raise BadInput(f"arch and data are names, e.g. 'resnet20', 'digits'; got {arch!r}, {data!r}")
    folder = _path(out, "out") if out is not None else Path("runs") / f"{arch}-{data.partition(':')[0]}"
    try:
        config = TrainConfig(arch, data, folder, **options)
    except TypeError as exc:
        raise BadInput(f"train takes {', '.join(TrainConfig.__dataclass_fields__)}: {exc}") from None
    return run_training(config)


@_public
def eval(checkpoint: str | Path, data: str | None = None, **options) -> dict:  # noqa: A001 (the command's name)
    """Top-1 and top-5 of a checkpoint in PyTorch: what `eval --json` writes. `options`: arch,
    batch_size, device."""
    from .train import evaluate_checkpoint
    return evaluate_checkpoint(_path(checkpoint, "checkpoint"), data, **options)


@_public
def debug(workdir: str | Path, precision: str = "fp16", data: str | None = None, **options) -> dict:
    """The layer-by-layer error of `precision` against fp32: what `debug --json` writes.
    `options`: images, tolerance, candidate, backend."""
    from .parity.debug import debug_layers
    return debug_layers(_path(workdir, "workdir"), precision, data, **options)


@_public
def report(paths: list[str | Path]) -> dict:
    """Parity and bench reports of one model merged as `report --json` writes them."""
    from .parity import fleet
    if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, (list, tuple)):
        raise BadInput(f"paths is a list of report files; got {paths!r}")
    return fleet.summary(fleet.read_reports([_path(p, "report") for p in paths]))


__all__ = ["load_model", "export", "calibrate", "parity", "bench", "check", "bundle", "verify",
           "train", "eval", "debug", "report", "load_thresholds", "ExportOptions", "ExportResult",
           "CalibrationResult", "BundleResult", "ModelCard", "Thresholds"]
