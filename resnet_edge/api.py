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
import inspect
import math
import os
import types
import typing
import warnings
from pathlib import Path

from .calibration import CalibrationResult, calibrate as _calibrate
from .deploy import BundleResult
from .errors import BadInput
from .export import ExportOptions, ExportResult, export_model as _export
from .parity.gates import DEFAULTS, Thresholds, check_layer, load_thresholds
from .zoo import ModelCard, load_model as _load_model

# the library's names for what the API (and the command) call otherwise
_CALLED = {"data_spec": "data", "eval_spec": "data", "out_dir": "out"}
_FLAGS = {"data_spec": "--data", "eval_spec": "--data"}


def _public(function):
    """Warnings raised anywhere inside `function` shown at the caller's line, not the library's."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def call(*args, **kwargs):
        try:  # a misspelt keyword is the caller's one line, as an unknown flag is
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise BadInput(f"api.{function.__name__}: {exc}; it takes {', '.join(signature.parameters)}") from None
        from .artifacts import release
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = function(*args, **kwargs)
            finally:
                release()  # a failed calibrate must not keep its work dir locked for the session
        for warning in caught:
            warnings.warn(warning.message, warning.category, stacklevel=2)
        return result
    return call


def _path(value, name: str) -> Path:
    """A path argument as the command takes it (a str or os.PathLike), or BadInput saying so."""
    if not isinstance(value, (str, os.PathLike)):
        raise BadInput(f"{name} {value!r} is not a path; give a folder as a str or Path")
    return Path(value)


def _conforms(value, hint) -> bool:
    """Whether `value` is what the annotation `hint` takes, as the command's option types would
    have it: a whole number is not True, a number is finite, a path is a str or os.PathLike."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint in (Path, os.PathLike):
        return isinstance(value, (str, os.PathLike))
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if origin is tuple and len(typing.get_args(hint)) == len(args) and args:
            return len(value) == len(args) and all(map(_conforms, value, args))
        return all(_conforms(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and origin is None:
        return isinstance(value, hint)
    return True  # a callable and the like: the library's own business


def _described(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if Path in args or os.PathLike in args:  # "a str or a path (str or Path)" says it twice
            args = [a for a in args if a is not str]
        return " or ".join(dict.fromkeys(_described(h) for h in args))
    return {type(None): "None", bool: "True or False", int: "a whole number", float: "a finite number",
            str: "a str", Path: "a path (str or Path)", os.PathLike: "a path (str or Path)"}.get(
        hint, f"a list ({hint})" if origin in (list, tuple) else getattr(hint, "__name__", str(hint)))


def _call(target, what: str, *args, **kwargs):
    """`target(*args, **kwargs)` once every argument is one `target` takes, of the type its
    annotation gives: BadInput in one line naming the argument and its option otherwise, never
    a TypeError from deep inside the work."""
    signature = inspect.signature(target)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        takes = [_CALLED.get(n, n) for n, p in signature.parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in ("step", "notice", "progress")]
        raise BadInput(f"api.{what}: {exc}; it takes {', '.join(takes)}") from None
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 (an annotation that does not resolve: the library checks)
        hints = {}
    for name, value in bound.arguments.items():
        if name in hints and not _conforms(value, hints[name]):
            flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
            raise BadInput(f"api.{what}: {_CALLED.get(name, name)} ({flag}) must be "
                           f"{_described(hints[name])}, got {str(value)[:60]!r}")
    return target(*bound.args, **bound.kwargs)


def _names(value, what: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"{what} are a list of names, e.g. ['ort', 'trt']; got {value!r}")
    return list(value)


def _thresholds(value) -> dict[str, Thresholds]:
    """The gates: the defaults, a TOML file's (a path), or the defaults with some precisions'
    gates changed: {precision: {gate: value}} changes those gates as `--gate int8.min_cosine=...`
    does, {precision: Thresholds(...)} replaces that precision's gates whole."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return load_thresholds(value)
    if not isinstance(value, dict):
        raise BadInput(f"thresholds are a TOML file or {{precision: {{gate: value}}}}, e.g. "
                       f"{{'int8': {{'min_cosine': 0.999}}}}; got {value!r}")
    from dataclasses import asdict
    layer = {}
    for precision, gates in value.items():
        if isinstance(gates, Thresholds):
            gates = asdict(gates)
        if not isinstance(gates, dict):
            raise BadInput(f"thresholds[{precision!r}] is a {{gate: value}} dict or a Thresholds; got {gates!r}")
        layer[precision] = gates
    try:
        return check_layer(layer, dict(DEFAULTS), "thresholds", user=True)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


@_public
def load_model(source: str | Path, **options):
    """A model in eval mode and its card, from a zoo name (+ weights) or a checkpoint path, as
    `export` loads it. `options`: weights, arch, num_classes, preprocess, weights_dir."""
    if not isinstance(source, (str, os.PathLike)):
        raise BadInput(f"api.load_model: source is a zoo name (see `resnet-edge models`) or a "
                       f"checkpoint path; got {source!r}")
    return _call(_load_model, "load_model", os.fspath(source), **options)


@_public
def export(model, card: ModelCard, out: str | Path, options: ExportOptions = ExportOptions(),
           **kwargs) -> ExportResult:
    """The model to `out`/model.onnx (and fp16, checkpoint, manifest), checked against
    ONNX Runtime: what `export` writes."""
    return _call(_export, "export", model, card, _path(out, "out"), options, **kwargs)


@_public
def calibrate(workdir: str | Path, data: str, **options) -> CalibrationResult:
    """model.int8.onnx and calibration.cache from `data`, as `calibrate` makes them. `options`:
    samples, method, recipe, sensitivity, exclude, holdout as the command takes them."""
    return _call(_calibrate, "calibrate", _path(workdir, "workdir"), data, **options)


@_public
def parity(workdir: str | Path, data: str | None = None, *, backends: list[str] | None = None,
           precisions: list[str] | None = None, ort_providers: list[str] | None = None,
           thresholds=None, limit: int | None = None, batch_size: int | None = None,
           device: str = "auto", agreement: str = "raw", cuda_graph: bool = False) -> dict:
    """The parity report (what `parity --json` writes) of `workdir` on `data` (None: the
    model's own built-in dataset, where it has one), as the command runs it: backends left out
    are every one that runs here (torch, ort, trt; those that cannot are skipped with the
    reason), backends named must run (`check` says exit 3 where one could not); precisions
    left out are all the device has. `ort_providers` (tensorrt, cuda, cpu) puts ONNX Runtime's
    providers side by side. `thresholds`: a TOML file, or {precision: {gate: value}} to change
    some gates (`{"int8": {"min_cosine": 0.9999}}`, as `--gate int8.min_cosine=0.9999`)."""
    from .parity.run import default_precisions, named_backends, run_parity, with_providers
    backends, precisions = _names(backends, "backends"), _names(precisions, "precisions")
    providers = _names(ort_providers, "ort_providers")
    named = named_backends(backends, providers)
    return _call(run_parity, "parity", _path(workdir, "workdir"), data,
                 backends=with_providers(backends or ["torch", "ort", "trt"], providers),
                 precisions=precisions or default_precisions(device), thresholds=_thresholds(thresholds),
                 explicit=bool(named) or precisions is not None, named_backends=named,
                 cpu_fp16="torch" in (backends or []) and "fp16" in (precisions or []),
                 limit=limit, batch_size=batch_size, device=device, agreement=agreement,
                 cuda_graph=cuda_graph)


@_public
def bench(workdir: str | Path, pairs: list[tuple[str, str]] | None = None,
          batch_sizes: list[int] | None = None, *, backends: list[str] | None = None,
          precisions: list[str] | None = None, ort_providers: list[str] | None = None,
          iterations: int | None = None, warmup: int = 10, budget: float | None = 300.0,
          device: str = "auto") -> dict:
    """Latency of each (backend, precision) at each batch size (what `bench --json` writes):
    `pairs` as given, or every backend x precision that runs here (`backends` and `precisions`
    narrow it, as the command's flags do; `ort_providers` side by side). Batch sizes default to
    the model's profile (min, opt, max); iterations to 100, or as many as fit `budget` seconds
    (None: no budget), as the command's."""
    from .bench import run_bench
    from .parity.run import REFERENCE, candidates, default_precisions, named_backends, with_providers
    backends, precisions = _names(backends, "backends"), _names(precisions, "precisions")
    providers = _names(ort_providers, "ort_providers")
    if pairs is None:
        chosen_backends = with_providers(backends or ["torch", "ort", "trt"], providers)
        chosen_precisions = precisions or default_precisions(device)
        pairs = candidates(chosen_backends, chosen_precisions)
        if "torch" in chosen_backends and "fp32" in chosen_precisions:
            pairs = [REFERENCE, *pairs]
        named = named_backends(backends, providers)
    else:
        _check_pairs(pairs)
        if providers:
            pairs = [(b, p) for name, p in pairs for b in with_providers([name], providers if name == "ort" else None)]
        named = list(dict.fromkeys(b for b, _ in pairs))
    return _call(run_bench, "bench", _path(workdir, "workdir"), [tuple(p) for p in pairs], batch_sizes,
                 iterations=iterations, warmup=warmup, budget=budget, device=device, named_backends=named,
                 cpu_fp16=("torch", "fp16") in map(tuple, pairs))


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
    """`report` (from `parity` or `bench`) as the command judges it: GateFailed (exit 1) with
    the command's line where a gate failed or a row regressed against its baseline,
    MissingBackend (exit 3) where a backend named could not run; else the report."""
    from .verdict import judge
    return judge(report)


@_public
def bundle(workdir: str | Path, target: str = "jetpack6", out: str | Path | None = None, *,
           data: str | None = None, **options) -> BundleResult:
    """The device bundle, written as `bundle` writes it: <out>/<work dir>-<target>.tar.gz, where
    `out` is a folder (made if needed; the work dir when None), golden inputs from `data` (None:
    the model's own built-in dataset). `options`: golden, thresholds, sign, accelerator,
    classifier_threshold, release as `make_bundle` takes them."""
    from .artifacts import ensure_writable_dir
    from .deploy import make_bundle
    workdir = _path(workdir, "workdir")
    folder = _path(out, "out") if out is not None else workdir
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"out {folder} is a file; give the folder the bundle goes in")
    ensure_writable_dir(folder)
    if "thresholds" in options:
        options["thresholds"] = _thresholds(options["thresholds"])
    return _call(make_bundle, "bundle", workdir, target, folder / f"{workdir.name}-{target}.tar.gz",
                 eval_spec=data, **options)


@_public
def verify(bundle: str | Path, *, key: str | Path | None = None, allow_unsigned: bool = False,
           **options) -> dict:
    """The report `verify --json` writes for a bundle folder or .tar.gz. `options`:
    min_created, precisions, backend, iterations, device_dir, require_tensorrt. Its "passed"
    says whether the gates held (`exit_code` 1 where not), as for parity."""
    from .deploy.check import verify_path
    return _call(verify_path, "verify", _path(bundle, "bundle"), key=key, allow_unsigned=allow_unsigned,
                 **options)


@_public
def train(arch: str, data: str = "digits", out: str | Path | None = None, **options):
    """Train as `train` does; returns the TrainResult (model_path, card with its measured
    accuracy, history, seconds). `options`: the TrainConfig fields (epochs, batch_size, lr, ...)."""
    from .train import TrainConfig, train as run_training
    if not isinstance(arch, str) or not isinstance(data, str):
        raise BadInput(f"arch and data are names, e.g. 'resnet20', 'digits'; got {arch!r}, {data!r}")
    folder = _path(out, "out") if out is not None else Path("runs") / f"{arch}-{data.partition(':')[0]}"
    config = _call(TrainConfig, "train", arch, data, folder, **options)
    config.validated()  # every option checked before the first epoch, not after it
    return run_training(config)


@_public
def eval(checkpoint: str | Path, data: str | None = None, **options) -> dict:  # noqa: A001 (the command's name)
    """Top-1 and top-5 of a checkpoint in PyTorch: what `eval --json` writes. `options`: arch,
    batch_size, device."""
    from .train import evaluate_checkpoint
    return _call(evaluate_checkpoint, "eval", _path(checkpoint, "checkpoint"), data, **options)


@_public
def debug(workdir: str | Path, precision: str = "fp16", data: str | None = None, **options) -> dict:
    """The layer-by-layer error of `precision` against fp32: what `debug --json` writes.
    `options`: images, tolerance, candidate, backend."""
    from .parity.debug import debug_layers
    return _call(debug_layers, "debug", _path(workdir, "workdir"), precision, data, **options)


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
