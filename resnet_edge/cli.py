"""The `resnet-edge` command line: parses options, calls the library, prints, sets exit codes.

One vocabulary across commands: `--data` is the data a command reads (pipeline and calibrate
name both with `--data-calib` / `--data-eval`), `--out` a directory, `--json FILE` the
machine-readable result (`-` for standard output), `--backends`/`--precisions` comma lists of
torch, ort, trt and fp32, fp16, int8, int8-fp16 (`--backend`/`--precision` where a command takes
one), and `--debug`, `--quiet`, `--verbose` work before or after the command name. Every command
ends by listing the files it wrote.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from . import console
from .console import emit_json, err, note, stdout, warn, wrote
from .errors import BadInput, GateFailed, MissingBackend, one_line, translate

GLOBAL_FLAGS = ("--debug", "--quiet", "--verbose")


class _Group(click.Group):
    """Turns the library's errors into one line on stderr and the exit code DESIGN.md gives,
    and takes the global flags wherever they stand on the line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = [a for a in args if a in GLOBAL_FLAGS]
        rest = [a for a in args if a not in GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + rest)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 (mapped in one place, errors.translate)
            mapped = translate(exc)
            if mapped is None or ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {one_line(mapped)}", err=True)
            ctx.exit(mapped.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; files being written were discarded", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("--quiet", is_flag=True, help="Print results and errors only: no progress, no notes.")
@click.option("--verbose", is_flag=True, help="Let the libraries' own logs through too.")
@click.version_option(package_name="resnet-edge")
def cli(debug: bool, quiet: bool, verbose: bool) -> None:
    """Ship ResNet classifiers to NVIDIA GPUs and Jetsons, with parity you can gate CI on.

    \b
    Typical flow:
      resnet-edge models                      # what can be built, by name
      resnet-edge export resnet50             # torchvision weights -> artifacts/resnet50/model.onnx
      resnet-edge export runs/r20/model.pt    # your checkpoint; arch and classes from its card
      resnet-edge pipeline resnet50 --data-calib images:/data/calib --data-eval imagefolder:/data/val

    Exit codes: 0 ok, 1 a parity/accuracy gate failed, 2 bad usage or input, 3 a backend or
    dependency is missing.
    """
    if quiet and verbose:
        raise BadInput("--quiet and --verbose contradict each other; drop one")
    console.configure(quiet=quiet, verbose=verbose)


READS_BARE_ONNX = ("parity", "bench", "debug")


def _workdir(ctx, param, value: Path) -> Path:
    """A work directory, given as itself or as its model.onnx (what a Polygraphy user types).
    parity, bench and debug also take a bare ONNX file that resnet-edge exported (its card and
    batch profile in its metadata), in a scratch work dir removed when the command ends, with
    ONNX Runtime's fp32 run of the file as the reference; commands that write a work dir need one."""
    if value.suffix != ".onnx" or not value.is_file():
        return value
    if value.name == "model.onnx" and (value.parent / "manifest.json").is_file():
        return value.parent
    if ctx.info_name not in READS_BARE_ONNX:
        raise BadInput(f"{value} is an ONNX file outside a work directory, and {ctx.info_name} "
                       "writes into one: run `resnet-edge export <checkpoint or zoo name> --out "
                       "DIR` and give DIR")
    import shutil
    import tempfile
    from .export import workdir_from_onnx
    scratch = Path(tempfile.mkdtemp(prefix="resnet-edge-onnx-"))
    ctx.call_on_close(lambda: shutil.rmtree(scratch, ignore_errors=True))
    return workdir_from_onnx(value, scratch)


def _json_target(ctx, param, value: Path | None) -> Path | None:
    if value is not None and str(value) == "-":
        console.json_owns_stdout()
    return value


JSON_OPTION = click.option("--json", "json_path", type=click.Path(path_type=Path),
                           callback=_json_target,
                           help="Write the result as JSON to FILE (- for standard output, with "
                                "everything else on standard error).")


def _writable(json_path: Path | None, **files: Path | None) -> None:
    """Output paths are checked before the work, so a bad one costs nothing (exit 2). Only
    --json writes to standard output (-); report files named by option (`html=...`) may not."""
    from .artifacts import ensure_writable_dir
    for option, path in files.items():
        if path is not None and str(path) == "-":
            raise BadInput(f"--{option} - would write a file named '-': give --{option} a file "
                           "name (only --json writes to standard output)")
    for path in (json_path, *files.values()):
        if path is None or str(path) == "-":
            continue
        if path.is_dir():
            raise BadInput(f"{path} is a folder; give a file name")
        ensure_writable_dir(path.parent)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _sizes(value: str | None, option: str) -> list[int] | None:
    """A comma list of batch sizes, or None for the model's own profile."""
    if value is None:
        return None
    try:
        sizes = [int(b) for b in _csv(value)]
    except ValueError:
        raise BadInput(f"{option} takes whole numbers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise BadInput(f"{option} must list batch sizes of at least 1")
    return sizes


def _float3(value: str | None, option: str):
    if value is None:
        return None
    try:
        numbers = [float(v) for v in _csv(value)]
    except ValueError:
        numbers = []
    if len(numbers) != 3:
        raise BadInput(f"{option} takes three numbers, one per RGB channel (e.g. 0.5,0.5,0.5), "
                       f"got {value!r}")
    return numbers


# ---- models --------------------------------------------------------------------------------

@cli.command()
@JSON_OPTION
def models(json_path) -> None:
    """List the ResNet variants this tool builds, with their weights and input sizes.

    \b
    Example:
      resnet-edge models --json - | jq '.[].name'
    """
    from .zoo import VARIANTS, parameter_count

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


# ---- export --------------------------------------------------------------------------------

def _default_out(source: str) -> Path:
    path = Path(source)
    if path.suffix:  # a checkpoint: name the work dir after its run folder when it is model.pt
        name = path.parent.name if path.stem in {"model", "best", "last"} and path.parent.name else path.stem
    else:
        name = source
    return Path("artifacts") / name


EXPORT_OPTIONS = [
    click.option("--weights", help="torchvision weights (DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2), "
                 "'none' for a seeded random init, or a checkpoint path. Default: DEFAULT for "
                 "ImageNet models, none for CIFAR models."),
    click.option("--weights-dir", type=click.Path(path_type=Path, file_okay=False),
                 envvar="RESNET_EDGE_WEIGHTS", help="Folder of torchvision weight files (as "
                 "torchvision names them, e.g. resnet18-f37072fd.pth) for machines without a "
                 "network [$RESNET_EDGE_WEIGHTS]."),
    click.option("--arch", help="Architecture of a plain state-dict checkpoint (e.g. resnet18)."),
    click.option("--num-classes", type=int, help="Class count; inferred from the checkpoint when left out."),
    click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]),
                 help="dynamo (opset 20) or torchscript (opset 17, for TensorRT 8.5/8.6: JetPack 5, 6.0)."),
    click.option("--opset", type=int, help="ONNX opset [dynamo: 20, torchscript: 17]."),
    click.option("--batch", type=int, help="One static batch size (what DLA and many Jetson "
                 "deployments need) instead of a dynamic batch."),
    click.option("--min-batch", type=int, default=1, show_default=True,
                 help="Smallest batch of the dynamic batch profile."),
    click.option("--opt-batch", type=int, help="Batch TensorRT tunes for [8, within the profile]."),
    click.option("--max-batch", type=int, default=32, show_default=True,
                 help="Largest batch of the dynamic batch profile; build, bundle and every "
                 "runtime follow this one profile."),
    click.option("--input-size", type=int, help="Crop side in pixels the model takes [the card's: "
                 "224 ImageNet, 32 CIFAR]."),
    click.option("--resize", type=int, help="Short side before the center crop [the card's]."),
    click.option("--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 [the card's]."),
    click.option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225 [the card's]."),
    click.option("--interpolation", type=click.Choice(["nearest", "nearest-exact", "bilinear", "bicubic"]),
                 help="Resize interpolation [the card's]."),
    click.option("--fold-normalization", is_flag=True,
                 help="Move mean and std into the graph, so the model takes RGB in 0..255: what "
                 "DeepStream's nvinfer feeds (one scale for every channel) needs for a "
                 "per-channel std."),
    click.option("--softmax", is_flag=True,
                 help="End the graph in a Softmax, so the model outputs probabilities: what "
                 "DeepStream's nvinfer classifier reads (bundle --target deepstream needs it)."),
]


def export_options(command):
    """The options that say what to export and how: one set, shared by export and pipeline."""
    for option in reversed(EXPORT_OPTIONS):
        command = option(command)
    return command


def _export_request(options: dict) -> dict:
    """The shared export options, parsed: what `prepare_export` takes."""
    return {**options, "mean": _float3(options["mean"], "--mean"),
            "std": _float3(options["std"], "--std")}


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
    from .export import CHECKPOINT_NAME, FP16_NAME, export_model, prepare_export

    _writable(json_path)
    out = out or _default_out(source)
    start = time.perf_counter()
    with console.steps() as step:
        step(f"loading {source}")
        model, card, options = prepare_export(source, _export_request(options), notice=note)
        result = export_model(model, card, out, options, force=force, step=step)
    batch = (f"static batch {options.batch}" if options.batch else
             f"batch {options.min_batch}..{options.max_batch}, opt {options.opt_batch}")
    summary = {"path": str(result.path), "skipped": result.skipped, "opset": options.opset,
               "profile": options.profile, "input_size": card.preprocess.input_size,
               "checks": [vars(c) | {"passed": c.passed} for c in result.checks],
               "seconds": result.seconds}
    if result.skipped:
        stdout.print(f"{result.path} is up to date (same weights and options); --force to redo")
    else:
        table = Table(title=f"{card.arch}: ONNX Runtime (CPU) vs PyTorch, seeded inputs")
        for col in ("batch", "max abs diff", "top-1 agreement", "result"):
            table.add_column(col, justify="right")
        for c in result.checks:
            table.add_row(str(c.batch), f"{c.max_abs_diff:.2e}", f"{c.top1_agreement:.1%}",
                          "[green]pass[/]" if c.passed else "[red]FAIL[/]")
        stdout.print(table)
        s = result.seconds
        stdout.print(f"exported {card.arch} (opset {options.opset}, {batch}, "
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
@click.option("--batch-size", type=int, default=128, show_default=True, help="Images per SGD step.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak SGD learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, help="L2 penalty [5e-4 for inputs <= 64 px, else 1e-4].")
@click.option("--schedule", type=click.Choice(["cosine", "step"]), default="cosine", show_default=True,
              help="Learning rate: cosine to 0, or x0.1 at 50% and 75% of the epochs.")
@click.option("--warmup-epochs", type=float, help="Linear warm-up [5 when batch > 256, else 0].")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True,
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
@click.option("--workers", type=int, help="Data loader processes [4 for image folders, else 0].")
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
    from .train import TrainConfig, train as run_training

    _writable(json_path)
    out = out or Path("runs") / f"{arch}-{data_spec.partition(':')[0]}"
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
                      f"{row['images_per_s']:.0f} img/s{eta}", highlight=False)
        result = run_training(config, on_epoch=on_epoch, progress=progress, notice=note)
    if not result.is_main:
        return
    m = result.card.metrics
    test = f", test top-1 {m['test_top1']:.2%} top-5 {m['test_top5']:.2%}" if "test_top1" in m else ""
    stdout.print(f"best epoch {m['best_epoch']}: val top-1 {m['val_top1']:.2%}{test}; "
                 f"{result.seconds:.0f} s training")
    wrote(result.model_path, out / "last.pt", out / "history.json", out / "training.png")
    emit_json({"model": str(result.model_path), "metrics": m, "seconds": result.seconds,
               "epochs": len(result.history)}, json_path)


@cli.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_spec",
              help="Evaluation data spec (labelled; a subset of the model's classes is fine) "
              "[the test split of the built-in dataset (digits, cifar10) the model was trained on here; required for any other model].")
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
    from .data import data_for, match_classes, open_data
    from .train import evaluate, resolve_device
    from .zoo import load_checkpoint

    _writable(json_path)
    model, card = load_checkpoint(checkpoint, arch=arch)
    data_spec = data_for(card, "test", data_spec, "--data")
    source = open_data(data_spec, input_shape=card.preprocess.input_shape)
    if not source.has_labels:
        raise BadInput(f"{data_spec} has no labels, so accuracy cannot be measured")
    match_classes(source, card.num_classes, card.class_names, f"{checkpoint} ({card.arch})")
    device = resolve_device(device)
    acc = evaluate(model.to(device), source, card.preprocess, batch_size=batch_size or 32,
                   device=device)
    result = {"checkpoint": str(checkpoint), "data": data_spec, "images": acc.images,
              "top1": acc.top1, "top5": acc.top5, "device": device}
    stdout.print(f"{card.arch} on {data_spec} ({acc.images} images, {device}): "
                 f"top-1 {acc.top1:.2%}  top-5 {acc.top5:.2%}")
    emit_json(result, json_path)


# ---- parity / bench / debug ----------------------------------------------------------------

def _gate_overrides(pairs: tuple[str, ...]) -> dict[str, dict[str, float]]:
    overrides: dict[str, dict[str, float]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        precision, dot, name = key.partition(".")
        try:
            number = float(value.removesuffix("%"))
        except ValueError:
            number = None
        if not sep or not dot or number is None:
            raise BadInput(f"--gate {pair!r} should look like fp16.max_accuracy_drop_pt=0.2")
        # "0.5%": a percentage gate below 1 % meant as such (see gates.check_layer)
        overrides.setdefault(precision, {})[name] = value if value.endswith("%") else number
    return overrides


def _failed_gates(rows: list[dict]) -> str:
    """'ort fp32 max_abs 7.6e-06 > 1e-09 (fail)': each failing gate, measured against its threshold."""
    from .parity.gates import describe
    return ", ".join(f"{row['backend']} {row['precision']} {describe(g)}"
                     for row in rows for g in row["gates"] if g["passed"] is False)


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=_workdir)
@click.option("--data", "data_spec",
              help="Evaluation data spec (labels give accuracy; without them only agreement) "
              "[the test split of the built-in dataset (digits, cifar10) the model was trained on here; required for any other model].")
@click.option("--limit", type=int, help="Use the first N images only.")
@click.option("--backends", help="Comma list of torch, ort, trt [all; skipped ones are reported].")
@click.option("--precisions", help="Comma list of fp32, fp16, int8, int8-fp16 (int8 with fp16 float parts) [all].")
@click.option("--batch-size", type=int, help="Images per batch [32, within the model's batch profile].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where torch and ONNX Runtime run [auto: cuda when there is a GPU].")
@click.option("--thresholds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML file: [fp16] max_accuracy_drop_pt = 0.2, etc.")
@click.option("--gate", "gates", multiple=True, metavar="PREC.NAME=VALUE",
              help="Override one threshold, e.g. --gate int8.max_accuracy_drop_pt=0.5 (repeatable).")
@click.option("--agreement", type=click.Choice(["raw", "decisive"]), default="raw", show_default=True,
              help="How the top-1 agreement gate counts: raw (every image), or decisive (images "
              "whose reference margin clears twice the row's own p99 logit error, judged by the "
              "95 % Wilson lower bound): a near-tie then cannot fail a correct model.")
@JSON_OPTION
@click.option("--markdown", type=click.Path(path_type=Path), help="Write Markdown (+ a PNG plot beside it).")
@click.option("--junit", type=click.Path(path_type=Path), help="Write JUnit XML, one case per gate.")
@click.option("--html", type=click.Path(path_type=Path),
              help="Write one self-contained HTML page: table, plots, disagreeing images.")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="An earlier `parity --json` report (main's, say) of this model on the same data: "
              "each row's top-1 (agreement without labels) is compared with it; exit 1 on a drop "
              "past --max-accuracy-drop-pt.")
@click.option("--max-accuracy-drop-pt", type=click.FloatRange(0, 100), default=0.5, show_default=True,
              help="With --baseline: the most a row's top-1 may fall, in percentage points.")
def parity(workdir, data_spec, limit, backends, precisions, batch_size, device, thresholds, gates,
           agreement, json_path, markdown, junit, html, baseline, max_accuracy_drop_pt) -> None:
    """Run one evaluation set through PyTorch fp32 (the reference) and every other backend x
    precision; compare logits, agreement and accuracy; gate; report.

    \b
    Gates (percent and points, as their names say; override with --thresholds FILE or --gate):
      every row: no NaN or inf logits
      fp32: min_top1_agreement_pct 100, max_abs 1e-3
      fp16: min_top1_agreement_pct 99.5, max_accuracy_drop_pt 0.1
      int8: min_top1_agreement_pct 95, min_cosine 0.99, max_accuracy_drop_pt 1,
            min_relative_accuracy_pct 99

    Exit 0 when every gate holds, 1 when one fails, 2 on bad usage, 3 when a backend or
    precision named explicitly with --backends/--precisions cannot run here.

    \b
    Examples:
      resnet-edge parity artifacts/resnet20 --data digits:test
      resnet-edge parity artifacts/resnet50 --data imagefolder:/data/imagenet/val --limit 5000 \\
          --backends torch,ort,trt --precisions fp32,fp16,int8 \\
          --json out/parity.json --markdown out/parity.md --junit out/junit.xml --html out/parity.html
    """
    from .parity import report as reports
    from .parity.gates import load_thresholds
    from .parity.run import PRECISIONS, run_parity

    from .parity.baseline import compare, read_baseline
    table_of_gates = load_thresholds(thresholds, _gate_overrides(gates))
    _writable(json_path, markdown=markdown, junit=junit, html=html)
    old = read_baseline(baseline) if baseline else None  # checked before the work
    explicit = backends is not None or precisions is not None
    cpu_fp16 = "torch" in _csv(backends or "") and "fp16" in _csv(precisions or "")
    with console.Progress("parity", "images") as bar:
        result = run_parity(workdir, data_spec,
                            backends=_csv(backends or "torch,ort,trt"),
                            precisions=_csv(precisions) if precisions else list(PRECISIONS),
                            thresholds=table_of_gates, limit=limit, batch_size=batch_size,
                            device=device, explicit=explicit, cpu_fp16=cpu_fp16,
                            progress=bar.update, keep_disagreements=html is not None,
                            agreement=agreement)
    if old is not None:
        result["baseline"] = compare(result, old, str(baseline), max_accuracy_drop_pt)
    _print_parity(result)
    for path, writer in ((markdown, reports.write_markdown), (junit, reports.write_junit),
                         (html, reports.write_html)):
        if path:
            wrote(path, *writer(result, path))
    emit_json(reports.public(result), json_path)
    summary = result["summary"]
    if summary["failed_gates"]:
        raise GateFailed(f"parity gates failed: {_failed_gates(result['candidates'])}")
    if result.get("baseline", {}).get("regressions"):
        raise GateFailed("accuracy regression against the baseline: " + "; ".join(
            f"{r['backend']} {r['precision']} "
            + (f"top-1 {r['top1_change_pt']:+.2f} pt" if r["top1_change_pt"] is not None
               else f"agreement {r['agreement_change_pt']:+.2f} pt")
            + f" (limit -{max_accuracy_drop_pt:g})" for r in result["baseline"]["regressions"]))
    if summary["explicit_backends_missing"]:
        raise MissingBackend("asked for but cannot run here: "
                             + "; ".join(f"{r['backend']} {r['precision']} ({r['reason']})"
                                         for r in result["candidates"] if r["status"] == "skipped"))


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=_workdir)
@click.option("--batch-sizes", help="Comma list of batch sizes [the model's min, opt and max batch].")
@click.option("--iterations", type=int, default=100, show_default=True,
              help="Timed iterations per backend and batch size.")
@click.option("--warmup", type=int, default=10, show_default=True,
              help="Untimed iterations first, per backend and batch size.")
@click.option("--backends", help="Comma list of torch, ort, trt [all that can run here].")
@click.option("--precisions", help="Comma list of fp32, fp16, int8, int8-fp16 (int8 with fp16 float parts) [all].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where torch and ONNX Runtime run [auto: cuda when there is a GPU].")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="An earlier `bench --json` report (main's, say) of this model on this machine: "
              "each latency is compared with it, noise and all; exit 1 on a regression.")
@click.option("--max-latency-regression-pct", type=click.FloatRange(0, 1000), default=10.0, show_default=True,
              help="With --baseline: a p50 this much slower fails, when the 95 % confidence "
              "interval of the ratio lies wholly past it (inconclusive when it straddles).")
@click.option("--power", is_flag=True,
              help="Also read power while each row runs: every rail tegrastats reports on a "
              "Jetson (average mW and mJ per image), or nvidia-smi's board draw on an x86 GPU. "
              "Where neither exists it says so in one line and the bench runs without it.")
@JSON_OPTION
def bench(workdir, batch_sizes, iterations, warmup, backends, precisions, device, baseline,
          max_latency_regression_pct, power, json_path) -> None:
    """Latency per backend x precision x batch size: warm-up, then timed iterations with the
    device synchronized. Reports mean, p50, p90, p99, std and images/s (from the p50) host to
    host, and device compute alone where the backend allows it (GPU backends). A bench
    expected to take over 30 s says how long before it starts.

    \b
    Example:
      resnet-edge bench artifacts/resnet50 --batch-sizes 1,8,32 --iterations 200
    """
    from .runtime.backends import CPU_FP16
    from .runtime.bench import compare_to_baseline, read_baseline, refuse_incomparable, run_bench

    sizes = _sizes(batch_sizes, "--batch-sizes")
    if iterations < 1 or warmup < 0:
        raise BadInput("--iterations must be at least 1, --warmup at least 0")
    _writable(json_path)
    old = read_baseline(baseline) if baseline else None  # checked before the work
    if old is not None:
        if iterations < 2:
            raise BadInput("--baseline compares latency samples: give --iterations 2 or more")
        onnx_path = workdir / "model.onnx"
        if onnx_path.is_file():  # another model or machine is refused before the bench, not after
            from .export.metadata import read_card
            from .runtime.latency import describe_machine
            card = read_card(onnx_path)
            refuse_incomparable(old, card.to_dict() if card else {}, describe_machine(), str(baseline))
    explicit = backends is not None or precisions is not None
    cpu_fp16 = "torch" in _csv(backends or "") and "fp16" in _csv(precisions or "")
    with console.steps() as step:
        result = run_bench(workdir, _bench_pairs(backends, precisions), sizes, iterations=iterations,
                           warmup=warmup, device=device, cpu_fp16=cpu_fp16, power=power,
                           step=step, notice=note)
    if old is not None:
        result["baseline"] = compare_to_baseline(result, old, str(baseline), max_latency_regression_pct)
    _print_bench(result)
    emit_json(result, json_path)
    if result.get("baseline", {}).get("regressions"):
        raise GateFailed("latency regression against the baseline: " + "; ".join(
            f"{r['device']} batch {r['batch_size']} p50 x{r['ratio']:.2f} (95 % interval "
            f"{r['low']:.2f}-{r['high']:.2f}, limit x{r['limit']:.2f})"
            for r in result["baseline"]["regressions"]))
    asked = [s for s in result["skipped"] if s["reason"] != CPU_FP16]
    if explicit and asked:
        raise MissingBackend("asked for but cannot run here: " + "; ".join(
            f"{s['backend']} {s['precision']} ({s['reason']})" for s in asked))


@cli.command(name="report")
@click.argument("reports", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--html", type=click.Path(path_type=Path), help="Write the merged page (self-contained HTML).")
@click.option("--markdown", type=click.Path(path_type=Path), help="Write the merged matrix as Markdown.")
@JSON_OPTION
def report_(reports, html, markdown, json_path) -> None:
    """Merge parity and bench reports of one model from many runs (a CI matrix, a fleet of
    devices) into one matrix: backend x precision (x batch for latency) by run, each run headed
    by where it ran, baseline verdicts marked with the change they judged, energy per image
    where bench read power, and what differs between the runs' machines and libraries.

    \b
    Example:
      resnet-edge report artifacts/*/parity.json artifacts/*/bench.json --html fleet.html
    """
    from .artifacts import write_text_atomic
    from .parity import fleet

    _writable(json_path, html=html, markdown=markdown)
    runs = fleet.read_reports(list(reports))
    keys, cells = fleet.matrix(runs)
    table = Table(title=f"{runs[0][1]['model']['arch']}: {len(runs)} runs")
    for col in ("kind", "backend", "batch"):
        table.add_column(col)
    for name, (_, run) in zip(fleet.names(runs), runs):
        table.add_column(f"{name}\n{fleet.where(run)}")
    for kind, backend, precision, batch in keys:
        table.add_row(kind, f"{backend} {precision}", str(batch),
                      *(escape(text) for text in cells[(kind, backend, precision, batch)]))
    stdout.print(table)
    differ = fleet.differences(runs)
    if differ:
        table = Table(title="where the runs differ")
        table.add_column("what")
        for name in fleet.names(runs):
            table.add_column(name)
        for field, values in differ:
            table.add_row(field, *map(escape, values))
        stdout.print(table)
    if html:
        write_text_atomic(html, fleet.page(runs, html))
    if markdown:
        write_text_atomic(markdown, fleet.markdown(runs))
    wrote(html, markdown)
    emit_json({"runs": [{"report": str(path), "where": fleet.where(run)} for path, run in runs],
               "rows": [{"kind": k, "backend": b, "precision": p, "batch": n, "cells": cells[(k, b, p, n)]}
                        for k, b, p, n in keys],
               "differences": [{"what": field, "values": values} for field, values in differ]}, json_path)


def _print_parity(report: dict) -> None:
    from .parity import report as reports
    stdout.print(reports.table(report))
    for row in report["candidates"]:
        if row["status"] == "skipped":
            stdout.print(f"[yellow]skipped[/] {row['backend']} {row['precision']}: {escape(row['reason'])}")
    compared = report.get("baseline")
    if compared:
        table = Table(title=f"against {compared['baseline']}: change in points, gate "
                            f"-{compared['max_accuracy_drop_pt']:g}")
        for col in ("backend", "top-1", "agreement", "verdict"):
            table.add_column(col, justify="left" if col in ("backend", "verdict") else "right")
        colors = {"pass": "green", "regression": "red", "no baseline": "cyan"}
        for r in compared["rows"]:
            top1, agree = r.get("top1_change_pt"), r.get("agreement_change_pt")
            table.add_row(f"{r['backend']} {r['precision']}", "-" if top1 is None else f"{top1:+.2f}",
                          "-" if agree is None else f"{agree:+.2f}",
                          f"[{colors[r['verdict']]}]{r['verdict']}[/]")
        stdout.print(table)
        ref = compared["reference"]
        if not ref["compared"]:
            stdout.print(escape(ref["note"]))
        else:  # printed with the table it qualifies: a changed reference moves every row
            said = (f"the reference ({report['reference']['backend']} {report['reference']['precision']}) "
                    f"against the baseline's saved outputs: the same top-1 on {ref['top1_same']:.2%} "
                    f"of {ref['images']} images, logits of the first {ref['logits_compared']} within "
                    f"{ref['max_abs_logit_change']:.2g}")
            stdout.print(escape(said) + ("; [yellow]the reference itself changed[/] (weights, "
                                         "preprocessing or libraries), so every row moved with it"
                                         if ref["changed"] else ""))


def _bench_pairs(backends: str | None, precisions: str | None) -> list[tuple[str, str]]:
    from .parity.run import PRECISIONS, REFERENCE, candidates
    pairs = candidates(_csv(backends or "torch,ort,trt"),
                       _csv(precisions) if precisions else list(PRECISIONS))
    wants_reference = "torch" in _csv(backends or "torch") and "fp32" in _csv(precisions or "fp32")
    return [REFERENCE, *pairs] if wants_reference else pairs


def _print_bench(result: dict) -> None:
    table = Table(title=f"{result['model']['arch']} latency ({result['iterations']} iterations after "
                        f"{result['warmup']} warm-up)")
    for col in ("backend", "batch", "mean ms", "p50", "p90", "p99", "std", "img/s (p50)", "device p50"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in result["results"]:
        h, d = r["host_to_host"], r["device_compute"]
        table.add_row(r["device"], str(h["batch_size"]), f"{h['mean_ms']:.3f}", f"{h['p50_ms']:.3f}",
                      f"{h['p90_ms']:.3f}", f"{h['p99_ms']:.3f}", f"{h['std_ms']:.3f}",
                      f"{h['images_per_s']:.1f}", f"{d['p50_ms']:.3f}" if d else "-")
    stdout.print(table)
    for s in result["skipped"]:
        stdout.print(f"[yellow]skipped[/] {s['backend']} {s['precision']}: {escape(s['reason'])}")
    if result.get("power", {}).get("source"):
        _print_power(result)
    compared = result.get("baseline")
    if compared:
        table = Table(title=f"against {compared['baseline']}: p50 ratio (new / baseline), 95 % "
                            f"interval, gate x{1 + compared['max_regression_pct'] / 100:.2f}")
        for col in ("backend", "batch", "p50 ratio", "interval", "verdict"):
            table.add_column(col, justify="left" if col in ("backend", "verdict") else "right")
        colors = {"pass": "green", "regression": "red", "inconclusive": "yellow", "no baseline": "cyan"}
        for r in compared["rows"]:
            measured = "ratio" in r
            table.add_row(r["device"], str(r["batch_size"]), f"{r['ratio']:.3f}" if measured else "-",
                          f"{r['low']:.3f}-{r['high']:.3f}" if measured else "-",
                          f"[{colors[r['verdict']]}]{r['verdict']}[/]")
        stdout.print(table)
        if compared["differs"]:
            note("the baseline differs in " + ", ".join(compared["differs"]))
        if any(r["verdict"] == "inconclusive" for r in compared["rows"]):
            note("inconclusive: the runs are too noisy to tell at this gate; more --iterations "
                 "(in both runs) narrow the interval")


def _print_power(result: dict) -> None:
    power = result["power"]
    table = Table(title=f"power from {power['source']}: {power['covers']}")
    for col in ("backend", "batch", "readings", "rail", "average W", "mJ / image"):
        table.add_column(col, justify="left" if col in ("backend", "rail") else "right")
    for r in result["results"]:
        p, batch = r["power"], str(r["host_to_host"]["batch_size"])
        if "reason" in p:
            table.add_row(r["device"], batch, str(p["samples"]), f"[yellow]{escape(p['reason'])}[/]", "-", "-")
            continue
        for rail, mw in p["rails_mw"].items():
            name = f"{rail} (total)" if rail == p["total_rail"] else rail
            table.add_row(r["device"], batch, str(p["samples"]), name, f"{mw / 1e3:.2f}",
                          f"{p['mj_per_image'][rail]:.2f}")
    stdout.print(table)


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=_workdir)
@click.option("--precision", type=click.Choice(["fp16", "int8", "int8-fp16"]), default="fp16",
              show_default=True, help="Which of the work dir's models to compare with fp32.")
@click.option("--candidate", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Compare this ONNX file instead (a conversion of the same model).")
@click.option("--data", "data_spec", help="Images to run (data spec) [the test split of the built-in dataset (digits, cifar10) the model was trained on here; required for any other model].")
@click.option("--images", type=int, default=8, show_default=True, help="How many images.")
@click.option("--tolerance", type=float,
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
      resnet-edge debug artifacts/resnet20 --precision int8
      resnet-edge debug artifacts/resnet50 --precision fp16 --data imagefolder:/data/val --json debug.json
      resnet-edge debug artifacts/resnet50 --candidate suspicious.fp16.onnx
      resnet-edge debug artifacts/resnet50 --precision int8 --backend trt    # on a GPU with TensorRT
    """
    from .parity.debug import debug_layers

    _writable(json_path)
    with console.steps() as step:
        step(f"running fp32 and {precision} with every layer exposed")
        result = debug_layers(workdir, precision, data_spec, images=images, tolerance=tolerance,
                              candidate=candidate, backend=backend)
    first = result["first_exceeding"]
    table = Table(title=f"{result['model']['arch']}: {precision} vs fp32, layer by layer "
                        f"({result['images']} images of {data_spec}; tolerance {result['tolerance']:g})")
    for col in ("#", "module", "op", "tensor", "rel error", "max abs", "cosine", "growth"):
        table.add_column(col, justify="left" if col in ("module", "op", "tensor") else "right")
    worst = -1.0
    for row in result["layers"]:
        rising = row["rel_error"] > worst
        worst = max(worst, row["rel_error"])
        if not (show_all or rising or (first and row["index"] == first["index"])):
            continue
        style = "red" if row["exceeds"] else ""
        table.add_row(str(row["index"]), row["module"], row["op"], row["tensor"],
                      f"[{style}]{row['rel_error']:.2e}[/]" if style else f"{row['rel_error']:.2e}",
                      f"{row['max_abs']:.2e}", f"{row['cosine']:.5f}", f"{row['growth']:.1f}x")
    stdout.print(table)
    if first:
        stdout.print(f"first layer past the tolerance: #{first['index']} {first['module']} "
                     f"({first['op']}, tensor {first['tensor']}): relative error "
                     f"{first['rel_error']:.3g} > {result['tolerance']:g}")
    else:
        stdout.print(f"every layer within the tolerance {result['tolerance']:g}")
    if backend == "auto" and result["backend"] == "ort":
        note("ONNX Runtime compared the layers (TensorRT is not here, or cannot build this "
             "comparison); where TensorRT is, --backend trt shows what an engine computes")
    emit_json(result, json_path)


# ---- calibrate / build ---------------------------------------------------------------------

@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=_workdir)
@click.option("--data", "--data-calib", "data_spec",
              help="Calibration data spec (images:PATH takes a plain folder); keep it apart from "
              "what parity evaluates on [the train split of the built-in dataset the model was trained on here; required for any other model].")
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
              "[the test split of the built-in dataset the model was trained on].")
@click.option("--tensorrt-version", default="10.3.0", show_default=True,
              help="TensorRT version named in calibration.cache's header (JetPack 6: 10.3, JetPack 5: "
              "8.5.2); builds re-head a copy for the TensorRT they find.")
@click.option("--thresholds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML gates used by --exclude auto.")
@JSON_OPTION
def calibrate(workdir, data_spec, samples, method, recipe, sensitivity, exclude, holdout, data_eval,
              tensorrt_version, thresholds, json_path) -> None:
    """Make model.int8.onnx (Q/DQ) and calibration.cache from real calibration data.

    Calibration runs once over every tensor int8 needs through the model's own Preprocess; the
    ranges feed the Q/DQ models, TensorRT's calibration cache (implicit INT8 on TensorRT <= 10,
    e.g. `trtexec --int8 --calib=calibration.cache` on a Jetson) and the sensitivity analysis.

    \b
    Examples:
      resnet-edge calibrate artifacts/resnet50 --data images:/data/calib --samples 512 --method entropy
      resnet-edge calibrate artifacts/resnet20 --data digits:train --method percentile --sensitivity
      resnet-edge calibrate artifacts/resnet20 --exclude auto          # keep sensitive layers in float
    """
    from .calibration import calibrate as run_calibration
    from .parity.gates import load_thresholds

    _writable(json_path)
    with console.steps() as step:
        result = run_calibration(workdir, data_spec, samples=samples, method=method, recipe=recipe,
                                 sensitivity=sensitivity, exclude=exclude, holdout=holdout,
                                 eval_spec=data_eval, tensorrt_version=tensorrt_version,
                                 thresholds=load_thresholds(thresholds), step=step)
    for message in result.warnings:
        warn(message)
    counts = ", ".join(f"{k}: {v}" for k, v in result.per_class.items()) or "no labels"
    stdout.print(f"calibration: {result.samples} images from {data_spec} ({method}); per class: {counts}")
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
    if result.holdout:
        h = result.holdout
        what = "top-1" if h["labelled"] else "top-1 agreement with fp32"
        stdout.print(f"held-out check on {h['images']} unused images ({what}): fp32 {h['fp32_top1']:.2%}, "
                     f"int8 {h['int8_top1']:.2%} ({h['drop_pt']:+.2f} pt)")
    wrote(*result.written)
    emit_json({"int8": str(result.path), "recipe": recipe, "method": method, "samples": result.samples,
               "per_class": result.per_class, "excluded": result.excluded, "holdout": result.holdout,
               "sensitivity": result.sensitivity, "warnings": result.warnings}, json_path)


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=_workdir)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True,
              help="The engine's precision; the ONNX file and flags follow from it and the TensorRT here.")
@click.option("--workspace", type=int, default=2048, show_default=True, help="Workspace limit, MiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="TensorRT's timing cache to load and update [timing.cache beside the engine, "
              "so one per GPU and TensorRT version]; a cache from another GPU or TensorRT is "
              "replaced with a warning.")
@click.option("--no-timing-cache", is_flag=True, help="Build without a timing cache.")
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson, TensorRT 8.5-10.7); "
              "fp16/int8, one static batch size, int8 from calibration.cache.")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: layers DLA cannot run go to the GPU.")
@click.option("--version-compatible", is_flag=True,
              help="Engine loads on later TensorRT of the same major (TensorRT 8.6+).")
@click.option("--hardware-compatible", is_flag=True,
              help="Engine runs on any Ampere or newer GPU (TensorRT 8.6+, compute capability 8.0+).")
@click.option("--int8-source", type=click.Choice(["auto", "qdq", "cache"]), default="auto", show_default=True,
              help="int8 from the Q/DQ model, or implicitly from calibration.cache (TensorRT <= 10); "
              "auto: cache for DLA, Q/DQ otherwise.")
@click.option("--typing", type=click.Choice(["auto", "weak", "strong"]), default="auto", show_default=True,
              help="auto: builder flags before TensorRT 10.12, strongly typed from 10.12 (always on 11).")
@click.option("--int8-float", type=click.Choice(["auto", "fp16", "fp32"]), default="auto", show_default=True,
              help="Strongly typed int8: float parts in fp16 (model.int8-fp16.onnx, auto) or fp32 "
              "(model.int8.onnx).")
@JSON_OPTION
def build(workdir, precision, workspace, timing_cache, no_timing_cache, dla_core, gpu_fallback,
          version_compatible, hardware_compatible, int8_source, typing, int8_float, json_path) -> None:
    """Build a TensorRT engine into engines/<gpu>-trt<version>/model.<precision>.engine.

    The engine's batch profile is the one the model was exported with (export --batch, or
    --min-batch/--opt-batch/--max-batch); a DLA engine takes its one opt batch size.

    Which ONNX file and which flags are used depends on the TensorRT version found here:
    8.5/8.6 use builder flags (FP16/INT8), 11.x is strongly typed (fp16 from model.fp16.onnx,
    int8 from model.int8-fp16.onnx), 10.x does either. fp32 engines are built without TF32.
    A JSON beside the engine records the TensorRT version, GPU, compute capability, ONNX
    sha256 and options. Exit 2 for options this TensorRT or GPU cannot honour, 3 without
    TensorRT, a GPU or a matching cuda-python.

    \b
    Examples:
      resnet-edge build artifacts/resnet50 --precision fp16
      resnet-edge build artifacts/resnet50 --precision int8 --timing-cache ~/.cache/resnet-edge/orin.cache
      resnet-edge build artifacts/resnet50 --precision int8 --dla-core 0 --gpu-fallback     # Jetson
    """
    from .artifacts import WorkDir
    from .calibration import INT8_NAME
    from .export.metadata import opset_of, quantization_info
    from .export import export_profile
    from .runtime import trt_engine, trt_plan, trt_rules, trt_runner
    from .runtime.backends import remake_command

    if workspace < 1:
        raise BadInput(f"--workspace must be at least 1 MiB, got {workspace}")
    if gpu_fallback and dla_core is None:
        raise BadInput("--gpu-fallback goes with --dla-core")
    if timing_cache and no_timing_cache:
        raise BadInput("--timing-cache and --no-timing-cache contradict each other; drop one")
    if not (workdir / "model.onnx").exists():
        raise BadInput(f"{workdir} has no model.onnx; run `resnet-edge export ... --out {workdir}` first")
    _writable(json_path)
    options = dict(int8_source=int8_source, typing=typing, dla=dla_core is not None,
                   version_compatible=version_compatible, hardware_compatible=hardware_compatible,
                   int8_float=int8_float)
    try:
        trt = trt_runner.import_trt()
        plan = trt_plan.build_plan(trt.__version__, precision, **options)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    except trt_rules.EngineError as exc:
        raise MissingBackend(str(exc)) from None
    wd = WorkDir(workdir)
    for name in (plan.onnx_file, *([trt_rules.CACHE_FILE] if plan.calibration_cache else [])):
        if wd.file(name).exists():  # a stale or half-written input is refused before building
            wd.vouch(name, remake_command(workdir, name))
    int8_file = workdir / INT8_NAME
    if (plan.onnx_file == INT8_NAME and int8_file.exists()
            and quantization_info(int8_file).get("recipe") == "cpu"):
        raise BadInput(f"{int8_file} was calibrated with --recipe cpu (uint8, asymmetric), "
                       f"which TensorRT cannot build; run `resnet-edge calibrate {workdir} --recipe "
                       "tensorrt` (or build with --int8-source cache)")
    if (workdir / plan.onnx_file).exists():
        problem = trt_rules.opset_problem(plan.onnx_file, opset_of(workdir / plan.onnx_file),
                                           trt.__version__)
        if problem:
            raise BadInput(problem)
    del options["dla"]
    profile = export_profile(workdir)
    with console.steps() as step:
        step(f"building the {precision} engine with TensorRT {trt.__version__}")
        try:
            engine = trt_engine.build_engine(
                workdir, precision, max_batch=profile["max"], opt_batch=profile["opt"],
                min_batch=profile["min"], workspace_mib=workspace,
                timing_cache=None if no_timing_cache else (str(timing_cache) if timing_cache else "auto"),
                dla_core=dla_core, gpu_fallback=gpu_fallback, warn=warn, **options)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        except trt_rules.EngineError as exc:
            raise MissingBackend(str(exc)) from None
    meta = trt_rules.read_engine_meta(engine)
    stdout.print(f"built in {meta['build_seconds']:.1f} s for {meta['gpu']} (sm "
                 f"{meta['compute_capability']}), TensorRT {meta['tensorrt']}, from {meta['onnx']}")
    wrote(engine, engine.with_suffix(trt_rules.ENGINE_JSON_SUFFIX), meta.get("timing_cache"))
    emit_json(meta, json_path)


# ---- bundle / verify / pipeline ------------------------------------------------------------

@cli.command()
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for NAME.key (private, mode 0600) and NAME.pub.")
@click.option("--name", default="signing", show_default=True, help="File name of the key pair.")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def keygen(out, name, force) -> None:
    """Make an Ed25519 key pair for signing bundles.

    Keep NAME.key secret (a CI secret); give NAME.pub to whoever verifies. A public key is never
    taken from inside a bundle.

    \b
    Example:
      resnet-edge keygen --out keys --name ci && resnet-edge bundle artifacts/r50 --sign keys/ci.key
    """
    from .deploy import signing
    try:
        if not name or name != Path(name).name or name.startswith("."):
            raise BadInput(f"--name takes a plain file name, got {name!r}")
        from .artifacts import ensure_writable_dir
        private, public, key_id = signing.keygen(ensure_writable_dir(out) / name, force=force)
    except signing.SignatureError as exc:
        raise (MissingBackend if exc.code == 3 else BadInput)(str(exc)) from None
    stdout.print(f"key id {key_id}; {private} is private (mode 0600)")
    wrote(private, public)


TARGET_NAMES = ["jetpack5", "jetpack6", "x86-trt10", "x86-trt11", "triton", "deepstream"]
TARGETS_HELP = ("jetpack5 = TensorRT 8.5 (opset <= 17), jetpack6 = TensorRT 10.3, x86-trt10, "
                "x86-trt11; triton = a Triton model repository too; deepstream = JetPack 6 plus "
                "nvinfer and deepstream-app configs (needs one std for all channels, or "
                "export --fold-normalization).")


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=_workdir)
@click.option("--target", type=click.Choice(TARGET_NAMES),
              default="jetpack6", show_default=True, help=TARGETS_HELP)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for <workdir name>-<target>.tar.gz [the work directory].")
@click.option("--data", "data_spec",
              help="Where the golden inputs come from (labelled, preprocessed by the model card) "
              "[the test split of the built-in dataset (digits, cifar10) the model was trained on here; required for any other model].")
@click.option("--golden", type=int, default=100, show_default=True, help="Golden images.")
@click.option("--thresholds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML gates carried in the bundle [parity defaults].")
@click.option("--sign", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Ed25519 private key (NAME.key from `resnet-edge keygen`) to sign manifest.json.")
@click.option("--triton-accelerator", type=click.Choice(["none", "fp16", "int8"]), default="none",
              show_default=True, help="With --target triton: run the ONNX model through ONNX "
              "Runtime's TensorRT execution accelerator in fp16 or int8 (the int8 Q/DQ model).")
@click.option("--classifier-threshold", type=float, default=0.0, show_default=True,
              help="With --target deepstream: nvinfer attaches a label only when its probability "
              "is above this (0 labels every frame with its top-1 class).")
@click.option("--release", help="A release name (e.g. v9) signed with the bundle's name, target "
              "and time; verify shows it.")
@JSON_OPTION
def bundle(workdir, target, out, data_spec, golden, thresholds, sign, triton_accelerator,
           classifier_threshold, release, json_path) -> None:
    """Pack a device bundle: ONNX files, calibration cache, golden I/O, gates, build and verify
    scripts, and manifest.json with the sha256 of every file (signed with --sign).

    \b
    Then on the Jetson, with JetPack's Python and TensorRT:
      tar xf resnet50-jetpack6.tar.gz && cd resnet50-jetpack6 && ./build_engine.sh int8
      python3 verify.py --key ci.pub   # or RESNET_EDGE_VERIFY_KEY=ci.pub, set once on the device

    \b
    Examples:
      resnet-edge bundle artifacts/resnet50 --target jetpack6 --out dist/
      resnet-edge bundle artifacts/resnet50 --sign keys/ci.key      # verify with --key keys/ci.pub
      resnet-edge bundle artifacts/resnet50 --target triton --triton-accelerator fp16
      resnet-edge export resnet50 --fold-normalization --softmax --out artifacts/resnet50-ds
      resnet-edge bundle artifacts/resnet50-ds --target deepstream --classifier-threshold 0.5
    """
    from .deploy import make_bundle
    from .parity.gates import load_thresholds

    _writable(json_path)
    path = (out or workdir) / f"{workdir.name}-{target}.tar.gz"
    with console.steps() as step:
        result = make_bundle(workdir, target, path, eval_spec=data_spec, golden=golden,
                             thresholds=load_thresholds(thresholds), sign=sign,
                             accelerator=triton_accelerator,
                             classifier_threshold=classifier_threshold, release=release,
                             step=step)
    for message in result.notes:
        warn(message)
    signed = f"signed by key {result.key_id}" if result.key_id else "unsigned"
    stdout.print(f"bundle for {target}: {', '.join(result.precisions)}; {signed}")
    stdout.print(f"manifest.json sha256 {result.manifest_sha256}")
    wrote(result.path)
    emit_json({"path": str(result.path), "target": target, "precisions": result.precisions,
               "manifest_sha256": result.manifest_sha256, "key_id": result.key_id,
               "notes": result.notes}, json_path)


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path, exists=True))
@click.option("--key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              envvar="RESNET_EDGE_VERIFY_KEY", show_envvar=True,
              help="The signer's public key (NAME.pub): refuse a bundle it did not sign. Needed "
              "unless --allow-unsigned.")
@click.option("--allow-unsigned", is_flag=True,
              help="Without a key, check the files against manifest.json only: nothing is "
              "authenticated (for demos).")
@click.option("--min-created", metavar="DATE",
              help="Refuse a bundle made before DATE (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ): no "
              "older bundle replayed.")
@click.option("--precisions", help="Comma list of fp32, fp16, int8 [every precision in the bundle].")
@click.option("--backend", type=click.Choice(["auto", "trt", "ort"]), default="auto", show_default=True,
              help="trt (TensorRT engines), ort (ONNX Runtime on the ONNX files), or auto: trt "
              "where TensorRT is, else ort.")
@click.option("--require-tensorrt", is_flag=True, help="Exit 3 instead of falling back to ONNX Runtime.")
@click.option("--iterations", type=int, default=100, show_default=True,
              help="Timed iterations per precision.")
@click.option("--device-dir", type=click.Path(path_type=Path),
              help="Where engines are built and looked for [<bundle>.device beside a folder; a "
              "temporary folder for an archive].")
@JSON_OPTION
def verify(bundle_path, key, allow_unsigned, min_created, precisions, backend, require_tensorrt,
           iterations, device_dir, json_path) -> None:
    """Check a bundle from anywhere: safe extraction, the signature and the bundle's signed
    name, target, release and time, every file against manifest.json, golden inputs through
    TensorRT (or ONNX Runtime where TensorRT is absent), the parity gates, latency.

    \b
    Examples:
      resnet-edge verify resnet50-jetpack6.tar.gz --key keys/ci.pub
      resnet-edge verify resnet50-jetpack6.tar.gz --key keys/ci.pub --min-created 2026-11-01
      resnet-edge verify resnet50-jetpack6.tar.gz --allow-unsigned   # a demo: nothing authenticated
    """
    import tempfile

    from .deploy.archive import BundleError, safe_extract
    from .deploy.verify_bundle import integrity_lines, verdict_line
    from .deploy.verify_bundle import verify as verify_bundle
    from .runtime.trt_rules import EngineError

    _writable(json_path)
    from .deploy.archive import created_bound
    from .deploy.verify_bundle import NEEDS_KEY
    if bundle_path.is_dir() and (bundle_path / "manifest.json").is_file() and not (
            bundle_path / "bundle.json").is_file():
        raise BadInput(f"{bundle_path} is a work directory, not a bundle; make one with "
                       f"`resnet-edge bundle {bundle_path}` and verify that")
    if key is None and not allow_unsigned:
        raise BadInput(NEEDS_KEY)
    try:
        min_created = created_bound(min_created) if min_created else None
    except BundleError as exc:
        raise BadInput(str(exc)) from None
    with tempfile.TemporaryDirectory() as tmp, console.steps() as step:
        try:
            root = bundle_path
            if bundle_path.is_file():
                step(f"extracting {bundle_path}")
                root = safe_extract(bundle_path, Path(tmp) / "bundle")
            step("verifying")
            report = verify_bundle(root, precisions=_csv(precisions) if precisions else None,
                                   backend=backend, build=True, iterations=iterations, key=key,
                                   allow_unsigned=allow_unsigned, min_created=min_created,
                                   device_dir=device_dir or (Path(tmp) / "device" if bundle_path.is_file() else None),
                                   require_tensorrt=require_tensorrt)
        except BundleError as exc:
            raise (MissingBackend if exc.code == 3 else BadInput)(str(exc)) from None
        except EngineError as exc:  # TensorRT is here but cannot build or load the engine
            raise MissingBackend(str(exc)) from None
    table = Table(title=f"{report['bundle']['arch']} bundle for {report['bundle']['about']}: "
                        f"{report['golden_images']} golden images")
    for col in ("backend", "max abs", "top-1 agree", "near-ties", "top-1", "p50 ms", "gates"):
        table.add_column(col, justify="left" if col in ("backend", "gates") else "right")
    from .parity.gates import describe
    for row in report["results"]:
        bad = [describe(g) for g in row["gates"] if g["passed"] is False]
        table.add_row(row["backend"], f"{row['metrics']['max_abs']:.2e}",
                      _decisive(row["metrics"]["decisive"]),
                      str(row["metrics"]["decisive"]["near_ties"]),
                      f"{row['accuracy']['top1']:.2%}" if row["accuracy"] else "-",
                      f"{row['latency']['host_to_host']['p50_ms']:.2f}",
                      "[red]FAIL: " + escape(", ".join(bad)) + "[/]" if bad else "[green]pass[/]")
    stdout.print(table)
    for line in integrity_lines(report):
        if line.startswith("warning: "):
            warn(line.removeprefix("warning: "))
        else:
            stdout.print(escape(line))
    stdout.print(verdict_line(report))
    emit_json(report, json_path)
    if report["failed_gates"]:
        raise GateFailed(f"bundle gates failed: {_failed_gates([dict(r, backend=r['backend'].split()[0]) for r in report['results']])}")


def _decisive(decisive: dict) -> str:
    """Agreement on the images a correct model cannot flip, with what that shows at least."""
    return f"{decisive['agree']}/{decisive['images']} (>= {decisive['lower_bound']:.1%})"


@cli.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="Work directory [artifacts/<name>].")
@click.option("--data-calib",
              help="Calibration data spec (images:PATH takes a plain folder of images) "
              "[the train split of the built-in dataset the model was trained on here; required for any other model].")
@click.option("--data-eval",
              help="Evaluation data spec (parity and the bundle's golden inputs) [the test split of the built-in dataset (digits, cifar10) the model was trained on here; required for any other model].")
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
@click.option("--max-accuracy-drop-pt", type=click.FloatRange(0, 100), default=0.5, show_default=True,
              help="With --baseline: the most a row's top-1 may fall, in percentage points.")
@click.option("--max-latency-regression-pct", type=click.FloatRange(0, 1000), default=10.0, show_default=True,
              help="With --baseline: a p50 this much slower fails, when the 95 % confidence "
              "interval of the ratio lies wholly past it.")
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
      resnet-edge pipeline runs/resnet20-digits/model.pt --out artifacts/resnet20
      resnet-edge pipeline resnet50 --data-calib images:/data/calib --data-eval imagefolder:/data/val \\
          --limit 5000 --out artifacts/resnet50
    """
    from .parity.gates import load_thresholds
    from .pipeline import STEPS, PipelineConfig, run_pipeline

    sizes = _sizes(bench_batch_sizes, "--bench-batch-sizes")
    if bench_iterations < 1:
        raise BadInput("--bench-iterations must be at least 1")
    _writable(json_path)
    config = PipelineConfig(source, out or _default_out(source), data_calib, data_eval, target,
                            _export_request(options), samples, method, recipe, limit,
                            batch_sizes=sizes, bench_iterations=bench_iterations,
                            bench=not no_bench, golden=golden, force=force, baseline=baseline,
                            max_accuracy_drop_pt=max_accuracy_drop_pt,
                            max_latency_regression_pct=max_latency_regression_pct)
    with console.Progress("pipeline", "steps", rate=False) as bar:
        def step(name, message):  # step k of n, and what that step is doing now
            bar.update(STEPS.index(name) + 1, len(STEPS), f"{name}: {message}")
        result = run_pipeline(config, load_thresholds(thresholds), step=step, notice=note)
    if result.parity:
        _print_parity(result.parity)
    table = Table(title=f"pipeline: {config.out}")
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


def main() -> None:
    # Before ONNX Runtime and torch load: a run sends no ONNX Runtime telemetry (1.29+ sends it
    # from Linux too, and keeps a session file in TMPDIR) unless ORT_DISABLE_TELEMETRY=0 asks
    # for it, and TorchInductor's cache folder, which torch makes when exporting loads its
    # compiler and leaves in TMPDIR, is a scratch one removed at exit unless one is named.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return cli(prog_name="resnet-edge")
    with tempfile.TemporaryDirectory(prefix="resnet-edge-inductor-") as scratch:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = scratch
        return cli(prog_name="resnet-edge")


if __name__ == "__main__":
    sys.exit(main())
