"""Quantization commands: `debug` (where a precision departs from fp32, layer by layer) and
`calibrate` (int8 from real data)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import console
from ..console import emit_json, note, stdout, warn, wrote
from ..errors import GateFailed
from .common import DEFAULT_DATA, JSON_OPTION, Finite, cli, data_paths, resolve_workdir, writable


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=resolve_workdir)
@click.option("--precision", type=click.Choice(["fp16", "int8", "int8-fp16"]), default="fp16",
              show_default=True, help="Which of the work dir's models to compare with fp32.")
@click.option("--candidate", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Compare this ONNX file instead (a conversion of the same model).")
@click.option("--data", "data_spec", help="Images to run (data spec) " + DEFAULT_DATA["test"])
@click.option("--images", type=int, default=8, show_default=True, help="How many images.")
@click.option("--tolerance", type=Finite(),
              help="Relative (L2) error a layer may reach [fp16 0.01, int8 0.1].")
@click.option("--backend", type=click.Choice(["auto", "trt", "ort"]), default="auto", show_default=True,
              help="trt: a TensorRT debug engine with every compared tensor marked as an output "
              "(needs TensorRT and a GPU); ort: ONNX Runtime (Q/DQ as written); auto: trt where "
              "TensorRT is, else ort.")
@click.option("--all", "show_all", is_flag=True,
              help="List every layer, not only where the error grows.")
@JSON_OPTION
def debug(workdir, precision, candidate, data_spec, images, tolerance, backend, show_all,
          json_path) -> None:
    """Find the layer where fp16 or int8 goes wrong: run the fp32 model and the candidate with
    every intermediate tensor exposed, compare them layer by layer (named after the PyTorch
    modules) and report the error growth and the first layer past the tolerance.

    \b
    Examples:
      resnet-edge debug artifacts/resnet20-digits --precision int8
      resnet-edge debug artifacts/resnet50 --precision fp16 --data imagefolder:/data/val --json debug.json
      resnet-edge debug artifacts/resnet50 --candidate suspicious.fp16.onnx
      resnet-edge debug artifacts/resnet50 --precision int8 --backend trt    # on a GPU with TensorRT
    """
    from ..parity.debug import debug_layers

    writable(json_path, (candidate, *data_paths(data_spec)), (workdir,))
    with console.steps() as step:
        step(f"running fp32 and {precision} with every layer exposed")
        result = debug_layers(workdir, precision, data_spec, images=images, tolerance=tolerance,
                              candidate=candidate, backend=backend)
    first = result["first_exceeding"]
    table = Table(title=f"{escape(result['model']['arch'])}: {precision} vs fp32, layer by layer "
                        f"({result['images']} images of {escape(str(data_spec))}; tolerance {result['tolerance']:g})")
    for col in ("#", "module", "op", "tensor", "rel error", "max abs", "cosine", "growth"):
        table.add_column(col, justify="left" if col in ("module", "op", "tensor") else "right")
    worst = -1.0
    for row in result["layers"]:
        rising = row["rel_error"] > worst
        worst = max(worst, row["rel_error"])
        if not (show_all or rising or (first and row["index"] == first["index"])):
            continue
        style = "red" if row["exceeds"] else ""
        table.add_row(str(row["index"]), escape(row["module"]), escape(row["op"]), escape(row["tensor"]),
                      f"[{style}]{row['rel_error']:.2e}[/]" if style else f"{row['rel_error']:.2e}",
                      f"{row['max_abs']:.2e}", f"{row['cosine']:.5f}", f"{row['growth']:.1f}x")
    stdout.print(table)
    if first:
        stdout.print(f"first layer past the tolerance: #{first['index']} {escape(first['module'])} "
                     f"({escape(first['op'])}, tensor {escape(first['tensor'])}): relative error "
                     f"{first['rel_error']:.3g} > {result['tolerance']:g}")
    else:
        stdout.print(f"every layer within the tolerance {result['tolerance']:g}")
    if backend == "auto" and result["backend"] == "ort":
        note("ONNX Runtime compared the layers (TensorRT is not here, or cannot build this "
             "comparison); where TensorRT is, --backend trt shows what an engine computes")
    emit_json(result, json_path)


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=resolve_workdir)
@click.option("--data", "--data-calib", "data_spec",
              help="Calibration data spec (images:PATH takes a plain folder); keep it apart from "
              "what parity evaluates on " + DEFAULT_DATA["train"])
@click.option("--samples", type=int, default=512, show_default=True,
              help="Images, drawn deterministically and class-balanced (NVIDIA advises ~500 for CNNs).")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="entropy",
              show_default=True, help="How calibration turns activations into int8 ranges.")
@click.option("--recipe", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="tensorrt: symmetric int8, Q/DQ placed for TensorRT fusion; cpu: u8 activations "
              "for ONNX Runtime's fast CPU kernels.")
@click.option("--sensitivity", is_flag=True, help="Rank layers by the accuracy drop each causes alone.")
@click.option("--exclude", help="'auto' (leave the most sensitive layers in float until the int8 "
              "gate holds) or a comma list of module names (layer1.0.conv1, fc) or ONNX node names.")
@click.option("--holdout", type=int, help="Unused calibration-source images for a quick int8 "
              "check afterwards [0; 500 with --sensitivity or --exclude auto]; `parity` is the "
              "full check.")
@click.option("--data-eval",
              help="What parity will evaluate on; calibrating on the same split is warned about "
              + DEFAULT_DATA["test"])
@click.option("--tensorrt-version", default="10.3.0", show_default=True,
              help="TensorRT version named in calibration.cache's header (JetPack 6: 10.3, JetPack 5: "
              "8.5.2); builds re-head a copy for the TensorRT they find.")
@click.option("--thresholds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML gates used by --exclude auto.")
@click.option("--float-classifier", is_flag=True,
              help="Leave the final Gemm (the classifier) in float: TensorRT runs it in fp16 beside the "
              "int8 convolutions, as ModelOpt's ONNX PTQ does.")
@click.option("--max-accuracy-drop-pt", type=Finite(0, 100),
              help="Repair until the held-out top-1 drop is at most this many points: the chosen "
              "--method, then the other methods, then the most sensitive layers left in float, fewest "
              "first; stops at the first that holds (exit 1 if none does; needs labelled data).")
@click.option("--max-float-layers", type=click.IntRange(min=0),
              help="With --max-accuracy-drop-pt: at most this many layers left in float (each costs "
              "speed on the device); 0 goes from the methods straight to fine-tuning [no limit].")
@click.option("--qat-epochs", type=int, default=5, show_default=True,
              help="With --max-accuracy-drop-pt: epochs of quantization-aware fine-tuning, its last step.")
@JSON_OPTION
def calibrate(workdir, data_spec, samples, method, recipe, sensitivity, exclude, holdout, data_eval,
              tensorrt_version, thresholds, float_classifier, max_accuracy_drop_pt, max_float_layers,
              qat_epochs, json_path) -> None:
    """Make model.int8.onnx (Q/DQ) and calibration.cache from real calibration data.

    Calibration runs once over every tensor int8 needs through the model's own Preprocess; the
    ranges feed the Q/DQ models, TensorRT's calibration cache (implicit INT8 on TensorRT <= 10,
    e.g. `trtexec --int8 --calib=calibration.cache` on a Jetson) and the sensitivity analysis.

    \b
    Examples:
      resnet-edge calibrate artifacts/resnet50 --data images:/data/calib --samples 512 --method entropy
      resnet-edge calibrate artifacts/resnet20-digits --data digits:train --method percentile --sensitivity
      resnet-edge calibrate artifacts/resnet20-digits --exclude auto          # keep sensitive layers in float
    """
    from ..calibration import calibrate as run_calibration
    from ..parity.gates import load_thresholds

    writable(json_path, (thresholds, *data_paths(data_spec, data_eval)), (workdir,))
    with console.steps() as step:
        result = run_calibration(workdir, data_spec, samples=samples, method=method, recipe=recipe,
                                 sensitivity=sensitivity, exclude=exclude, holdout=holdout,
                                 eval_spec=data_eval, tensorrt_version=tensorrt_version,
                                 thresholds=load_thresholds(thresholds),
                                 max_accuracy_drop_pt=max_accuracy_drop_pt,
                                 max_float_layers=max_float_layers, qat_epochs=qat_epochs,
                                 float_classifier=float_classifier, step=step)
    _report(result, recipe, exclude, json_path)


def _report(result, recipe: str, exclude: str | None, json_path) -> None:
    """What calibrate and qat print and write: the draw, the layer ranking, the repair steps,
    the held-out check, the files; exit 1 when a repair budget was not met. The result's
    warnings were said as calibration began (DataWarning), not after it."""
    counts = ", ".join(f"{k}: {v}" for k, v in result.per_class.items()) or "no labels"
    stdout.print(f"calibration: {result.samples} images from {escape(result.data)} ({result.method}); "
                 f"per class: {escape(counts)}")
    if result.sensitivity:
        table = Table(title="per-layer sensitivity (that layer alone in int8), most sensitive first")
        for col in ("layer", "module", "top-1", "drop pt", "logit RMSE"):
            table.add_column(col, justify="left" if col in ("layer", "module") else "right")
        for row in result.sensitivity:
            table.add_row(row["layer"], row["module"], f"{row['top1']:.2%}", f"{row['drop_pt']:+.2f}",
                          f"{row['logit_rmse']:.4f}")
        stdout.print(table)
    if exclude:
        stdout.print(f"left in float: {', '.join(result.excluded) or 'none (the int8 gate holds with every layer quantized)'}")
    repair = result.repair
    if repair and repair["steps"]:
        table = Table(title=f"repair: held-out top-1 drop within {repair['budget_pt']:g} pt, first that holds kept")
        for col in ("step", "top-1", "drop pt", "cost", "holds"):
            table.add_column(col, justify="left" if col in ("step", "cost") else "right")
        for row in repair["steps"]:
            if row.get("skipped"):
                table.add_row(escape(row["step"]), "-", "-", escape(row["skipped"]), "no")
                continue
            cost = (f"{len(row['float_layers'])} layer(s) in float" if row["float_layers"] else
                    f"every layer int8, {row['qat']['epochs']} epochs (best {row['qat']['best_epoch']})"
                    if row.get("qat") else "every layer int8")
            table.add_row(escape(row["step"]), f"{row['top1']:.2%}", f"{row['drop_pt']:+.2f}", cost,
                          "yes" if row["holds"] else "no")
        stdout.print(table)
    if repair:
        stdout.print(f"kept: {escape(repair['kept'])}")
    if result.holdout:
        h = result.holdout
        what = "top-1" if h["labelled"] else "top-1 agreement with fp32"
        stdout.print(f"held-out check on {h['images']} unused images ({what}): fp32 {h['fp32_top1']:.2%}, "
                     f"int8 {h['int8_top1']:.2%} ({h['drop_pt']:+.2f} pt)")
    wrote(*result.written)
    emit_json({"int8": str(result.path), "recipe": recipe, "method": result.method, "samples": result.samples,
               "per_class": result.per_class, "excluded": result.excluded, "holdout": result.holdout,
               "sensitivity": result.sensitivity, "repair": repair, "warnings": result.warnings}, json_path)
    if repair and repair["met"] is False:
        if len(repair["steps"]) == 1 and repair["steps"][0].get("qat"):  # the qat command
            raise GateFailed(f"quantization-aware fine-tuning lost {repair['steps'][0]['drop_pt']:.2f} pt, more "
                             f"than --max-accuracy-drop-pt {repair['budget_pt']:g}; more --epochs or more "
                             "training data may do it")
        tuned = any(row.get("qat") for row in repair["steps"])
        hint = ("more --qat-epochs or more labelled data may" if tuned else
                "more calibration data, or `resnet-edge qat`, may")
        raise GateFailed(f"no recipe met --max-accuracy-drop-pt {repair['budget_pt']:g}; kept the one that "
                         f"lost least ({repair['kept']}); {hint}")
    if repair and repair["met"] is None:
        warn(f"--max-accuracy-drop-pt not judged: {repair['kept'].partition(': ')[2]}; calibrate on "
             "labelled data with images to spare to use it")


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=resolve_workdir)
@click.option("--data", "data_spec",
              help="Labelled training images (held-out ones judge the epochs) [the train split of the "
              "built-in dataset the model was trained on here; required for any other model].")
@click.option("--epochs", type=int, default=5, show_default=True,
              help="Passes over --data; the best by held-out top-1 is kept.")
@click.option("--samples", type=int, default=512, show_default=True,
              help="Calibration images, where the work dir's ranges must be made first.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="entropy",
              show_default=True, help="The calibrated scales fine-tuning starts from (and keeps).")
@click.option("--holdout", type=int,
              help="Held-out images of --data that pick the best epoch and judge the result [500].")
@click.option("--max-accuracy-drop-pt", type=Finite(0, 100),
              help="Exit 1 when the held-out top-1 drop is larger [the int8 gate of --thresholds].")
@click.option("--thresholds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML gates; the int8 gate's max_accuracy_drop_pt is the default budget.")
@JSON_OPTION
def qat(workdir, data_spec, epochs, samples, method, holdout, max_accuracy_drop_pt, thresholds,
        json_path) -> None:
    """Quantization-aware fine-tuning: int8 with every layer quantized, where post-training
    calibration loses too much.

    The work dir's PyTorch model (model.pt) trains a few epochs with the Q/DQ model's own int8
    rounding in its forward pass (PyTorch's fake-quant operators: per-channel weights, the
    calibrated per-tensor activation scales, the residual rule), batch norm folded as the
    export folds it; the best epoch by held-out top-1 is written as model.int8.onnx and
    model.int8-fp16.onnx through the same path as `calibrate`, so calibration.cache, parity,
    bundles and verify take it unchanged. `calibrate --max-accuracy-drop-pt` runs this as its
    last step when nothing cheaper holds.

    \b
    Examples:
      resnet-edge qat artifacts/resnet20-digits --epochs 5
      resnet-edge qat artifacts/resnet50 --data imagefolder:/data/train --epochs 1 --max-accuracy-drop-pt 0.5
    """
    from ..calibration import calibrate as run_calibration
    from ..parity.gates import load_thresholds

    writable(json_path, (thresholds, *data_paths(data_spec)), (workdir,))
    with console.steps() as step:
        result = run_calibration(workdir, data_spec, samples=samples, method=method, recipe="tensorrt",
                                 holdout=holdout, thresholds=load_thresholds(thresholds),
                                 max_accuracy_drop_pt=max_accuracy_drop_pt, qat_epochs=epochs,
                                 fine_tune=True, step=step)
    _report(result, "tensorrt", None, json_path)
