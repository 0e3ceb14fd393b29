"""`pipeline`: export -> calibrate -> build -> parity -> bench -> bundle, each step skipped when
its inputs (file hashes and options, in manifest.json) are unchanged since it last ran."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .artifacts import WorkDir, ensure_writable_dir, release, sha256_file, write_json_atomic
from .calibration import CACHE_NAME, INT8_FP16_NAME, INT8_NAME, RANGES_NAME, calibrate
from .data import data_for
from .errors import BadInput
from .export import (CHECKPOINT_NAME, FP16_NAME, ONNX_NAME, export_model, export_profile,
                     prepare_export)
from .parity import report as reports
from .parity.gates import Thresholds
from .parity.run import REFERENCE, candidates, default_precisions, run_parity
from .runtime import trt_engine, trt_plan, trt_rules, trt_runner
from .parity.baseline import MAX_ACCURACY_DROP_PT, change, compare as compare_parity
from .parity.baseline import refuse_incomparable as refuse_parity
from .parity.baseline import read_baseline as read_parity_baseline
from .bench import compare_to_baseline, read_baseline as read_bench_baseline
from .bench import refuse_incomparable, run_bench, slowdown
from .runtime.latency import describe_machine
from .runtime.regression import MAX_REGRESSION_PCT

STEPS = ("export", "calibrate", "build", "parity", "bench", "bundle")
PARITY_REPORTS = {"parity.json": reports.write_json, "parity.md": reports.write_markdown,
                  "junit.xml": reports.write_junit, "parity.html": reports.write_html}
PARITY_FILES = ("parity.json", "parity.md", "parity.png", "junit.xml", "parity.html")


@dataclass
class StepResult:
    step: str
    status: str  # ran, skipped (up to date), unavailable, failed
    seconds: float = 0.0
    detail: str = ""


@dataclass
class PipelineResult:
    steps: list[StepResult] = field(default_factory=list)
    parity: dict | None = None
    bundle: Path | None = None
    written: list[Path] = field(default_factory=list)  # by this run, in order; skipped steps write nothing

    @property
    def failed(self) -> bool:
        return any(s.status == "failed" for s in self.steps)


@dataclass
class PipelineConfig:
    source: str
    out: Path
    data_calib: str | None = None  # [the built-in dataset the model was trained on, train split]
    data_eval: str | None = None  # [its test split]
    target: str = "jetpack6"
    export: dict = field(default_factory=dict)  # the options export takes (prepare_export)
    samples: int = 512
    method: str = "entropy"
    recipe: str = "tensorrt"
    limit: int | None = None
    batch_sizes: list[int] | None = None  # [the model's min and opt batch]
    bench_iterations: int = 20
    bench: bool = True
    golden: int = 100
    force: bool = False
    # a folder of an earlier run's reports (main's): parity.json and/or bench.json to hold this
    # run to, at these gates
    baseline: Path | None = None
    max_accuracy_drop_pt: float = MAX_ACCURACY_DROP_PT
    max_latency_regression_pct: float = MAX_REGRESSION_PCT


def run_pipeline(config: PipelineConfig, thresholds: dict[str, Thresholds], *,
                 step: Callable[[str, str], None] = lambda name, message: None,
                 notice: Callable[[str], None] = lambda message: None) -> PipelineResult:
    """The steps in order; export options come from `config.export`, and jetpack5 exports with
    TorchScript (opset 17) unless an exporter is given."""
    from .deploy import TARGETS, make_bundle
    if config.target not in TARGETS:
        raise BadInput(f"unknown --target {config.target!r}; use {', '.join(TARGETS)}")
    out = Path(config.out)
    result = PipelineResult()
    reports_dir = out / "reports"
    old_parity, old_bench = _baselines(config.baseline)  # read and checked before any work
    try:
        def run(name: str, key: dict | None, outputs: list[str], body: Callable[[], str],
                vouched: list[str] = ()) -> None:
            wd = WorkDir(out)
            start = time.perf_counter()
            if (key is not None and not config.force and wd.step_fresh(name, key)
                    and all(_vouched(wd, n) for n in vouched)):
                result.steps.append(StepResult(name, "skipped", 0.0, "up to date"))
                return
            step(name, f"{name}")
            detail = body()
            status = "failed" if detail.startswith("FAIL") else "ran"
            if status == "ran" and key is not None:
                WorkDir(out).record_step(name, key, outputs)
            if status != "skipped":
                result.written += [out / n for n in outputs if (out / n).is_file()]
            result.steps.append(StepResult(name, status, time.perf_counter() - start, detail))

        # export: its own manifest entry already skips an unchanged export
        start = time.perf_counter()
        step("export", "loading the model")
        exporter = "torchscript" if TARGETS[config.target].max_opset < 18 else "dynamo"
        model, card, options = prepare_export(config.source, config.export, default_exporter=exporter,
                                              notice=notice)
        TARGETS[config.target].check_model(card, config.source)  # refused now, not after every step
        config = replace(config, data_calib=data_for(card, "train", config.data_calib, "--data-calib"),
                         data_eval=data_for(card, "test", config.data_eval, "--data-eval"))
        if old_bench is not None:  # another model or machine is refused before the work, not after
            refuse_incomparable(old_bench[1], card.to_dict(), describe_machine(), str(old_bench[0]))
        # one hold over every step, from the first write: no other command starts writing between
        WorkDir(ensure_writable_dir(out)).hold("pipeline")
        exported = export_model(model, card, out, options, force=config.force,
                                step=lambda m: step("export", m))
        result.steps.append(StepResult("export", "skipped" if exported.skipped else "ran",
                                       time.perf_counter() - start,
                                       "up to date" if exported.skipped else
                                       f"opset {options.opset}, checks "
                                       f"{'pass' if all(c.passed for c in exported.checks) else 'FAIL'}"))
        if not exported.skipped:
            result.written += [p for p in (out / ONNX_NAME, out / FP16_NAME, out / CHECKPOINT_NAME)
                               if p.is_file()]

        def model_hashes() -> dict[str, str]:
            return {f: sha256_file(out / f) for f in (ONNX_NAME, FP16_NAME, INT8_NAME, INT8_FP16_NAME, CACHE_NAME)
                    if (out / f).exists()}

        def do_calibrate() -> str:
            r = calibrate(out, config.data_calib, samples=config.samples, method=config.method,
                          recipe=config.recipe, eval_spec=config.data_eval,
                          tensorrt_version=TARGETS[config.target].tensorrt, thresholds=thresholds,
                          step=lambda m: step("calibrate", m))
            held = r.holdout
            return (f"{r.samples} images, {config.method}, {config.recipe} recipe"
                    + (f"; held-out int8 drop {held['drop_pt']:+.2f} pt" if held else ""))
        calibrated = [INT8_NAME, CACHE_NAME, RANGES_NAME] + ([INT8_FP16_NAME] if config.recipe == "tensorrt" else [])
        run("calibrate", {ONNX_NAME: sha256_file(out / ONNX_NAME), "data": config.data_calib,
                          "samples": config.samples, "method": config.method, "recipe": config.recipe},
            calibrated, do_calibrate, vouched=calibrated)

        start = time.perf_counter()
        try:
            trt = trt_runner.import_trt()
            gpu, _ = trt_runner.current_gpu()
            built, notes = [], []
            profile = export_profile(out)  # the batch range this export was made for
            for precision in ("fp16", "int8"):
                engine = trt_rules.engine_path(out, gpu, trt.__version__, precision)
                source = out / trt_plan.build_plan(trt.__version__, precision).onnx_file
                if precision == "int8" and config.recipe != "tensorrt":
                    notes.append(f"int8 not built: the {config.recipe} recipe is for ONNX Runtime")
                    continue
                if engine.exists() and trt_rules.read_engine_meta(engine).get("onnx_sha256") == sha256_file(source):
                    continue  # built from this very ONNX file already
                step("build", f"{precision} engine")
                made = trt_engine.build_engine(out, precision, min_batch=profile["min"],
                                               opt_batch=profile["opt"], max_batch=profile["max"])
                built.append(made.name)
                result.written += [made, made.with_suffix(trt_rules.ENGINE_JSON_SUFFIX)]
            detail = f"TensorRT {trt.__version__}: {', '.join(built)}" if built else "up to date"
            result.steps.append(StepResult("build", "ran" if built else "skipped",
                                           time.perf_counter() - start, "; ".join([detail, *notes])))
        except trt_rules.EngineError as exc:
            result.steps.append(StepResult("build", "unavailable", 0.0, str(exc)))

        def do_parity() -> str:
            report = run_parity(out, config.data_eval, backends=["torch", "ort", "trt"],
                                precisions=default_precisions(), thresholds=thresholds,
                                limit=config.limit, keep_disagreements=True,
                                before_pass=None if old_parity is None else (
                                    lambda model, data: refuse_parity(old_parity[1], model, data, str(old_parity[0]))),
                                progress=lambda d, t: step("parity", f"{d}/{t} images"))
            if old_parity is not None:
                report["baseline"] = compare_parity(report, old_parity[1], str(old_parity[0]),
                                                    config.max_accuracy_drop_pt)
            reports_dir.mkdir(exist_ok=True)
            for name, writer in PARITY_REPORTS.items():
                writer(report, reports_dir / name)
            result.parity = reports.public(report)
            ran = sum(r["status"] == "ran" for r in report["candidates"])
            failed = report["summary"]["failed_gates"] + [
                f"{r['backend']} {r['precision']} {change(r)} against the baseline "
                f"(limit -{config.max_accuracy_drop_pt:g} pt)"
                for r in report.get("baseline", {}).get("regressions", [])]
            return (f"FAIL: {', '.join(failed)}" if failed else
                    f"pass: {ran} candidates vs torch fp32, {len(report['candidates']) - ran} skipped")
        parity_key = {**model_hashes(), "data": config.data_eval, "limit": config.limit,
                      "thresholds": {p: vars(t) for p, t in thresholds.items()},
                      **_baseline_key(old_parity, config.max_accuracy_drop_pt)}
        run("parity", parity_key, [f"reports/{name}" for name in PARITY_FILES], do_parity)
        if result.parity is None and (reports_dir / "parity.json").exists():
            result.parity = reports.load(reports_dir / "parity.json")
        bundle_name = f"{out.name}-{config.target}.tar.gz"

        def stop_before_bundle(failed: str) -> PipelineResult:
            # an older bundle left in --out would look like this run's result: remove it
            (out / bundle_name).unlink(missing_ok=True)
            WorkDir(out).forget_step("bundle")
            result.steps.append(StepResult("bundle", "skipped", 0.0, f"{failed} failed: not bundling"))
            return result
        if result.failed:
            result.steps.append(StepResult("bench", "skipped", 0.0, "parity failed"))
            return stop_before_bundle("parity")

        def do_bench() -> str:
            pairs = [REFERENCE, *candidates(["torch", "ort", "trt"], default_precisions())]
            profile = export_profile(out)
            sizes = config.batch_sizes or sorted({profile["min"], profile["opt"]})
            bench = run_bench(out, pairs, sizes, iterations=config.bench_iterations,
                              warmup=3, step=lambda m: step("bench", m), notice=notice)
            if old_bench is not None:
                bench["baseline"] = compare_to_baseline(bench, old_bench[1], str(old_bench[0]),
                                                        config.max_latency_regression_pct)
            write_json_atomic(reports_dir / "bench.json", bench)
            slower = [slowdown(r) for r in bench.get("baseline", {}).get("regressions", [])]
            if slower:
                return "FAIL: latency regression against the baseline: " + "; ".join(slower)
            best = min(bench["results"], key=lambda r: r["host_to_host"]["p50_ms"] / r["host_to_host"]["batch_size"])
            return (f"{len(bench['results'])} measurements; fastest per image: {best['device']} "
                    f"({best['host_to_host']['images_per_s']:.0f} img/s at batch {best['host_to_host']['batch_size']})")
        if config.bench:
            run("bench", {**model_hashes(), "batch_sizes": config.batch_sizes,
                          "iterations": config.bench_iterations,
                          **_baseline_key(old_bench, config.max_latency_regression_pct)},
                ["reports/bench.json"], do_bench)
        else:
            result.steps.append(StepResult("bench", "skipped", 0.0, "--no-bench"))
        if result.failed:  # slower than the baseline: nothing bundled, as for a failed gate
            return stop_before_bundle("bench")

        def do_bundle() -> str:
            made = make_bundle(out, config.target, out / bundle_name, eval_spec=config.data_eval,
                               golden=config.golden, thresholds=thresholds,
                               step=lambda m: step("bundle", m))
            return "; ".join([f"{made.path.name} ({made.path.stat().st_size / 1e6:.1f} MB, "
                              f"manifest sha256 {made.manifest_sha256[:16]}...)", *made.notes])
        run("bundle", {**model_hashes(), "target": config.target, "data": config.data_eval,
                       "golden": config.golden, "thresholds": {p: vars(t) for p, t in thresholds.items()}},
            [bundle_name], do_bundle)
        result.bundle = out / bundle_name
        return result
    finally:
        release(out)


def _baselines(folder: Path | None) -> tuple[tuple[Path, dict] | None, tuple[Path, dict] | None]:
    """(path, report) of the folder's parity.json and bench.json, each None where absent."""
    if folder is None:
        return None, None
    parity, bench = Path(folder) / "parity.json", Path(folder) / "bench.json"
    if not (parity.is_file() or bench.is_file()):
        raise BadInput(f"--baseline {folder} holds neither parity.json nor bench.json; give the "
                       "reports folder of an earlier pipeline run (main's, say)")
    return ((parity, read_parity_baseline(parity)) if parity.is_file() else None,
            (bench, read_bench_baseline(bench)) if bench.is_file() else None)


def _baseline_key(baseline: tuple[Path, dict] | None, gate: float) -> dict:
    """What a step's skip check adds for its baseline: another baseline or gate reruns it."""
    return {"baseline": sha256_file(baseline[0]), "gate": gate} if baseline else {}



def _vouched(wd: WorkDir, name: str) -> bool:
    try:
        wd.vouch(name, "")
    except BadInput:
        return False
    return True


__all__ = ["PipelineConfig", "PipelineResult", "run_pipeline", "STEPS"]
