"""Model commands: `models` (what can be built), `export` (torch -> ONNX), `train`, `eval`."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import console
from ..console import emit_json, err, note, stdout, wrote
from .common import (DEFAULT_DATA, JSON_OPTION, Finite, cli, data_paths, default_out, export_options,
                     export_request, writable)


# ---- models --------------------------------------------------------------------------------

@cli.command()
@JSON_OPTION
def models(json_path) -> None:
    """List the ResNet variants this tool builds, with their weights and input sizes.

    \b
    Example:
      resnet-edge models --json - | jq '.[].name'
    """
    from ..zoo import VARIANTS, parameter_count

    rows = [{"name": v.name, "family": v.family, "input_size": v.default_preprocess.input_size,
             "resize": v.default_preprocess.resize, "default_classes": v.default_classes,
             "parameters": parameter_count(v), "weights": v.weight_names}
            for v in VARIANTS.values()]
    table = Table(title="ResNet zoo", caption="weights: torchvision names; every model also "
                  "takes 'none' (random init) or a checkpoint. Parameters at the default class count.")
    for col in ("name", "family", "input", "params", "weights"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in rows:
        table.add_row(r["name"], r["family"], f'{r["input_size"]} (resize {r["resize"]})',
                      f'{r["parameters"] / 1e6:.2f}M', " ".join(r["weights"]) or "-")
    stdout.print(table)
    emit_json(rows, json_path)


@cli.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="Work directory [artifacts/<name>].")
@export_options
@click.option("--force", is_flag=True, help="Export again even if model.onnx is up to date.")
@JSON_OPTION
def export(source, out, force, json_path, **options) -> None:
    """Export a zoo model or a checkpoint to ONNX, then prove the file matches PyTorch.

    SOURCE is a zoo name (see `resnet-edge models`) or a checkpoint path. The ONNX file gets the
    batch profile (dynamic min..max, or one static --batch) and the model card (arch, classes,
    preprocessing) in its metadata; it is kept only if onnx.checker passes and ONNX Runtime
    matches PyTorch at two batch sizes (max abs diff <= 1e-3, top-1 agreement 100%); otherwise
    exit 1 and no model.onnx.

    \b
    Examples:
      resnet-edge export resnet50                                   # IMAGENET1K_V2 weights
      resnet-edge export resnet50 --weights IMAGENET1K_V1 --out artifacts/r50v1
      resnet-edge export resnet18 --weights none                    # offline, random init
      resnet-edge export resnet18 --weights-dir /mnt/weights        # offline, real weights
      resnet-edge export path/to/model.pth --arch resnet18 --num-classes 10 --input-size 64
      resnet-edge export resnet50 --exporter torchscript            # opset 17 for JetPack 5
      resnet-edge export resnet18 --batch 1                         # static batch, e.g. for DLA
    """
    from ..export import CHECKPOINT_NAME, FP16_NAME, export_model, prepare_export

    out = out or default_out(source)
    writable(json_path, (Path(source) if Path(source).is_file() else None,), (out,))
    start = time.perf_counter()
    with console.steps() as step:
        step(f"loading {source}")
        model, card, options = prepare_export(source, export_request(options), notice=note)
        result = export_model(model, card, out, options, force=force, step=step)
    batch = (f"static batch {options.batch}" if options.batch else
             f"batch {options.min_batch}..{options.max_batch}, opt {options.opt_batch}")
    summary = {"path": str(result.path), "skipped": result.skipped, "opset": options.opset,
               "profile": options.profile, "input_size": card.preprocess.input_size,
               "checks": [vars(c) | {"passed": c.passed} for c in result.checks],
               "seconds": result.seconds}
    if result.skipped:
        stdout.print(f"{escape(str(result.path))} is up to date (same weights and options); --force to redo")
    else:
        table = Table(title=f"{escape(card.arch)}: ONNX Runtime (CPU) vs PyTorch, seeded inputs")
        for col in ("batch", "max abs diff", "top-1 agreement", "result"):
            table.add_column(col, justify="right")
        for c in result.checks:
            table.add_row(str(c.batch), f"{c.max_abs_diff:.2e}", f"{c.top1_agreement:.1%}",
                          "[green]pass[/]" if c.passed else "[red]FAIL[/]")
        stdout.print(table)
        s = result.seconds
        stdout.print(f"exported {escape(card.arch)} (opset {options.opset}, {batch}, "
                     f"{card.preprocess.input_size} px) in {time.perf_counter() - start:.1f} s "
                     f"(export {s['export']:.1f} s, checks {s['checks']:.1f} s)")
        wrote(result.path, out / FP16_NAME, out / CHECKPOINT_NAME, out / "manifest.json")
    emit_json(summary, json_path)


# ---- train / eval --------------------------------------------------------------------------

@cli.command()
@click.argument("arch")
@click.option("--data", "data_spec", default="digits", show_default=True,
              help="Training data spec: digits (offline), cifar10, imagefolder:PATH (uses "
              "PATH/train and PATH/val when present), npy:PATH,LABELS.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory [runs/<arch>-<data>].")
@click.option("--epochs", type=int, help="Epochs [digits 30, cifar10 30, imagefolder 10].")
@click.option("--batch-size", type=int, help="Images per SGD step [128, halved while an epoch "
              "would be fewer than 8 steps: a few hundred photos get 16 or 32].")
@click.option("--lr", type=Finite(), default=0.1, show_default=True, help="Peak SGD learning rate.")
@click.option("--momentum", type=Finite(), default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=Finite(), help="L2 penalty [5e-4 for inputs <= 64 px, else 1e-4].")
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True,
              help="Learning rate: cosine to 0, or x0.1 at 50% and 75% of the epochs.")
@click.option("--warmup-epochs", type=Finite(), help="Linear warm-up [5 when batch > 256, else 0].")
@click.option("--label-smoothing", type=Finite(), default=0.0, show_default=True,
              help="Cross-entropy label smoothing.")
@click.option("--pretrained", help="Fine-tune torchvision weights (e.g. IMAGENET1K_V2) with a new head.")
@click.option("--weights-dir", type=click.Path(path_type=Path, file_okay=False),
              envvar="RESNET_EDGE_WEIGHTS", help="Folder of torchvision weight files for "
              "--pretrained without a network [$RESNET_EDGE_WEIGHTS].")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run [auto: cuda when torch sees a GPU].")
@click.option("--resume", type=click.Path(path_type=Path), help="Continue from a run's last.pt.")
@click.option("--plot", is_flag=True, help="Also write training.png (accuracy, loss, learning rate).")
@click.option("--workers", type=int, help="Data loader processes [image folders: one fewer than "
              "the cores here, at most 4; else 0].")
@click.option("--limit", type=int, help="Train on the first N training images only (a quick "
              "run-through of the flow; validation and test stay whole).")
@JSON_OPTION
def train(arch, data_spec, out, epochs, batch_size, lr, momentum, weight_decay, schedule,
          warmup_epochs, label_smoothing, pretrained, weights_dir, seed, device, resume, plot,
          workers, limit, json_path) -> None:
    """Train a ResNet with the ResNet paper's recipe (SGD, momentum 0.9, cosine or step LR).

    Writes model.pt (the best epoch by validation accuracy, with the model card and measured
    val/test accuracy), last.pt (for --resume) and history.json (loss, accuracy, learning rate,
    images/s and the gradient L2 norm of each stage per epoch). Launch with torchrun for
    multi-GPU.

    \b
    Examples:
      resnet-edge train resnet20 --data digits --out runs/resnet20-digits      # offline, ~2 min
      resnet-edge train resnet18 --data cifar10 --epochs 30 --out runs/r18-c10
      resnet-edge train resnet50 --data imagefolder:/data/flowers --pretrained IMAGENET1K_V2 --epochs 5
      torchrun --nproc-per-node 4 -m resnet_edge.cli train resnet50 --data imagefolder:/data/in1k
    """
    from ..train import TrainConfig, train as run_training

    out = out or Path("runs") / f"{arch}-{data_spec.partition(':')[0]}"
    writable(json_path, (resume, *data_paths(data_spec)), (out,),
             (out / "history.json", out / "training.png"))
    config = TrainConfig(arch, data_spec, out, epochs, batch_size, lr, momentum, weight_decay,
                         schedule, warmup_epochs, label_smoothing, pretrained, seed, device,
                         resume, plot, workers, weights_dir, limit)
    run = {"epochs": None, "first": None, "started": time.perf_counter()}
    with console.Progress("train", "batches") as bar:
        def progress(done, total, stats):
            run["epochs"] = stats["epochs"]
            run["first"] = run["first"] or stats["epoch"]
            bar.update(done, total, f"epoch {stats['epoch']}/{stats['epochs']}, "
                                    f"loss {stats['loss']:.3f}, acc {stats['acc']:.1%}")

        def on_epoch(row):
            if console.Settings.quiet:
                return
            # the whole run's time left, at the pace of the epochs this run has trained
            done = row["epoch"] - (run["first"] or row["epoch"]) + 1
            left = (time.perf_counter() - run["started"]) / done * (run["epochs"] - row["epoch"])
            eta = f"  about {left / 60:.1f} min left" if row["epoch"] < run["epochs"] else ""
            err.print(f"epoch {row['epoch']:3d}/{run['epochs']}  loss {row['loss']:.3f}  train "
                      f"{row['train_top1']:.1%}  val {row['val_top1']:.1%}  lr {row['lr']:.4g}  "
                      f"{console.rate(row['images_per_s'])} img/s{eta}", highlight=False)
        result = run_training(config, on_epoch=on_epoch, progress=progress, notice=note)
    if not result.is_main:
        return
    m = result.card.metrics
    top5 = f" top-5 {m.get('test_top5', 0):.2%}" if result.card.num_classes > 5 else ""  # else always 100 %
    test = f", test top-1 {m['test_top1']:.2%}{top5}" if "test_top1" in m else ""
    stdout.print(f"best epoch {m['best_epoch']}: val top-1 {m['val_top1']:.2%}{test}; "
                 f"{result.seconds:.0f} s training")
    wrote(result.model_path, out / "last.pt", out / "history.json", out / "training.png")
    emit_json({"model": str(result.model_path), "metrics": m, "seconds": result.seconds,
               "epochs": len(result.history)}, json_path)


@cli.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_spec",
              help="Evaluation data spec (labelled; a subset of the model's classes is fine) "
              + DEFAULT_DATA["test"])
@click.option("--arch", help="Architecture, for a plain state-dict checkpoint.")
@click.option("--batch-size", type=int, help="Images per batch [32].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to run [auto: cuda when torch sees a GPU].")
@JSON_OPTION
def eval_(checkpoint, data_spec, arch, batch_size, device, json_path) -> None:
    """Top-1 / top-5 accuracy of a checkpoint in PyTorch, through the model card's Preprocess.

    \b
    Example:
      resnet-edge eval runs/resnet20-digits/model.pt --data digits:test --json -
    """
    from ..train import evaluate_checkpoint

    writable(json_path, (checkpoint, *data_paths(data_spec)))
    result = evaluate_checkpoint(checkpoint, data_spec, arch=arch, batch_size=batch_size or 32,
                                 device=device)
    stdout.print(f"{escape(result['arch'])} on {escape(result['data'])} ({result['images']} images, "
                 f"{result['device']}): top-1 {result['top1']:.2%}"
                 + (f"  top-5 {result['top5']:.2%}" if result["classes"] > 5 else ""))
    emit_json(result, json_path)
