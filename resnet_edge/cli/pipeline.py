"""`pipeline`: every step from a model to a verified bundle, each skipped when unchanged."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import console
from ..console import emit_json, note, stdout, wrote
from ..errors import BadInput, GateFailed
from .common import (DEFAULT_DATA, JSON_OPTION, MAX_ACCURACY_DROP_OPTION, MAX_LATENCY_REGRESSION_OPTION,
                     TARGET_NAMES, TARGETS_HELP, cli, default_out, export_options, export_request,
                     data_paths, parse_sizes, print_parity, writable)


@cli.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="Work directory [artifacts/<name>].")
@click.option("--data-calib",
              help="Calibration data spec (images:PATH takes a plain folder of images) "
              + DEFAULT_DATA["train"])
@click.option("--data-eval",
              help="Evaluation data spec (parity and the bundle's golden inputs) " + DEFAULT_DATA["test"])
@click.option("--target", type=click.Choice(TARGET_NAMES),
              default="jetpack6", show_default=True, help=TARGETS_HELP)
@export_options
@click.option("--samples", type=int, default=512, show_default=True, help="Calibration images.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="entropy",
              show_default=True, help="How calibration turns activations into int8 ranges.")
@click.option("--recipe", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="tensorrt: Q/DQ for TensorRT; cpu: uint8 for ONNX Runtime's CPU kernels.")
@click.option("--limit", type=int, help="Evaluate parity on the first N images only.")
@click.option("--thresholds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML gates for parity and the bundle [parity defaults].")
@click.option("--golden", type=int, default=100, show_default=True, help="Golden images in the bundle.")
@click.option("--bench-batch-sizes",
              help="Comma list of batch sizes for the bench step [the model's min and opt batch].")
@click.option("--bench-iterations", type=int, default=20, show_default=True,
              help="Timed iterations per backend and batch size in the bench step.")
@click.option("--no-bench", is_flag=True, help="Leave the bench step out.")
@click.option("--force", is_flag=True, help="Run every step even if its inputs are unchanged.")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="The reports folder of an earlier pipeline run (main's, say): its parity.json "
              "and bench.json hold this run's parity and bench steps as `parity --baseline` and "
              "`bench --baseline` do; a regression fails the step and nothing is bundled.")
@MAX_ACCURACY_DROP_OPTION
@MAX_LATENCY_REGRESSION_OPTION
@JSON_OPTION
def pipeline(source, out, data_calib, data_eval, target, samples, method, recipe, limit, thresholds,
             golden, bench_batch_sizes, bench_iterations, no_bench, force, baseline,
             max_accuracy_drop_pt, max_latency_regression_pct, json_path, **options) -> None:
    """export -> calibrate -> build (where TensorRT is) -> parity -> bench -> bundle, in one go.

    Each step is skipped when its inputs (hashes and options in manifest.json) are unchanged.
    Reports go to <out>/reports/ (parity.json, parity.md + png, parity.html, junit.xml,
    bench.json); the bundle to <out>/<name>-<target>.tar.gz. Exit 1 when a parity gate fails
    (nothing bundled).

    \b
    Examples:
      resnet-edge pipeline runs/resnet20-digits/model.pt --out artifacts/resnet20-digits
      resnet-edge pipeline resnet50 --data-calib images:/data/calib --data-eval imagefolder:/data/val \\
          --limit 5000 --out artifacts/resnet50
    """
    from ..parity.gates import load_thresholds
    from ..pipeline import PARITY_FILES, STEPS, PipelineConfig, run_pipeline

    sizes = parse_sizes(bench_batch_sizes, "--bench-batch-sizes")
    if bench_iterations < 1:
        raise BadInput("--bench-iterations must be at least 1")
    out = out or default_out(source)
    writable(json_path, (Path(source) if Path(source).is_file() else None, thresholds, baseline,
                         *data_paths(data_calib, data_eval)), (out,),
             tuple(out / "reports" / name for name in (*PARITY_FILES, "bench.json")))
    config = PipelineConfig(source, out, data_calib, data_eval, target,
                            export_request(options), samples, method, recipe, limit,
                            batch_sizes=sizes, bench_iterations=bench_iterations,
                            bench=not no_bench, golden=golden, force=force, baseline=baseline,
                            max_accuracy_drop_pt=max_accuracy_drop_pt,
                            max_latency_regression_pct=max_latency_regression_pct)
    with console.Progress("pipeline", "steps", rate=False) as bar:
        def step(name, message):  # step k of n, and what that step is doing now
            bar.update(STEPS.index(name) + 1, len(STEPS), f"{name}: {message}")
        result = run_pipeline(config, load_thresholds(thresholds), step=step, notice=note)
    if result.parity:
        print_parity(result.parity)
    table = Table(title=f"pipeline: {escape(str(config.out))}")
    for col in ("step", "status", "seconds", "result"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    colors = {"ran": "green", "skipped": "cyan", "unavailable": "yellow", "failed": "red"}
    for s in result.steps:
        table.add_row(s.step, f"[{colors[s.status]}]{s.status}[/]", f"{s.seconds:.1f}", escape(s.detail))
    stdout.print(table)
    if not result.written:
        stdout.print("wrote nothing: every step was up to date")
    wrote(*result.written)
    emit_json({"out": str(config.out), "bundle": str(result.bundle) if result.bundle else None,
               "steps": [vars(s) for s in result.steps]}, json_path)
    if result.failed:
        raise GateFailed("pipeline stopped: " + "; ".join(s.detail for s in result.steps if s.status == "failed"))
