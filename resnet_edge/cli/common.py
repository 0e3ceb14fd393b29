"""What every command shares: the group (one-line errors, exit codes, global flags), the
options several commands take, and the printing several commands do."""

from __future__ import annotations

import math
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import console
from ..console import stdout
from ..errors import BadInput, one_line, translate



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
            click.echo(f"error: {console.visible(one_line(mapped))}", err=True)
            ctx.exit(mapped.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; files being written were discarded", err=True)
            ctx.exit(130)
        finally:
            from ..artifacts import release
            release()  # in-process callers (tests, scripts) go on without this command's locks


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

    \b
    Offline, the work dir the commands' examples use (artifacts/resnet20-digits):
      resnet-edge train resnet20              # digits, ~2 min -> runs/resnet20-digits/model.pt
      resnet-edge export runs/resnet20-digits/model.pt   # -> artifacts/resnet20-digits

    Exit codes: 0 ok, 1 a parity/accuracy gate failed, 2 bad usage or input, 3 a backend or
    dependency is missing.
    """
    if quiet and verbose:
        raise BadInput("--quiet and --verbose contradict each other; drop one")
    from ..epoch import source_date_epoch
    from ..runtime.gpu import pinned_device
    source_date_epoch()  # before any library reads it (numpy.f2py does, with int(), on import)
    pinned_device()
    console.configure(quiet=quiet, verbose=verbose)


# where --data comes from when it is left out (data.data_for), as each command's --help says
DEFAULT_DATA = {
    split: f"[what the model was trained on here, as its card records: the built-in set's "
           f"{split} split (digits, cifar10), or {where} of the image folder it was trained on, "
           "said in a note; required for any other model, or where that folder is not on this "
           "machine]."
    for split, where in (("test", "the test/ (else val/) folder"), ("train", "the train/ folder"))}

READS_BARE_ONNX = ("parity", "bench", "debug")
BARE_ONNX = "resnet_edge.bare_onnx"


def resolve_workdir(ctx, param, value: Path) -> Path:
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
    from ..export import workdir_from_onnx
    scratch = Path(tempfile.mkdtemp(prefix="resnet-edge-onnx-"))
    try:
        made = workdir_from_onnx(value, scratch)
    except BaseException:
        # click runs no close callbacks for a parameter that failed: removed here, on every path
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    ctx.call_on_close(lambda: shutil.rmtree(scratch, ignore_errors=True))
    ctx.meta[BARE_ONNX] = value
    return made


def _json_target(ctx, param, value: Path | None) -> Path | None:
    if value is not None and str(value) == "-":
        console.json_owns_stdout()
    return value


JSON_OPTION = click.option("--json", "json_path", type=click.Path(path_type=Path),
                           callback=_json_target, is_flag=False, flag_value="-",
                           help="Write the result as JSON to FILE (- or no FILE for standard "
                                "output, with everything else on standard error).")


# where parity and bench run, and how
DEVICE_OPTION = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where torch and ONNX Runtime run [auto: $RESNET_EDGE_DEVICE where set, else cuda when "
    "there is a GPU].")
PRECISIONS_OPTION = click.option(
    "--precisions", help="Comma list of fp32, tf32 (a GPU's TF32 math), fp16, int8, int8-fp16 "
    "(int8 with fp16 float parts) [all that the device has].")
ORT_PROVIDERS_OPTION = click.option(
    "--ort-providers", metavar="LIST",
    help="ONNX Runtime's providers, side by side: a comma list of tensorrt, cuda, cpu, each "
    "probed before use and its rows named ort-<provider> [the device's: cuda on a GPU, cpu].")


class Finite(click.FloatRange):
    """A number option that refuses nan and inf: NaN passes every comparison, so a NaN gate or
    range would never fail."""

    name = "float"

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else f"finite, {super()._describe_range()}"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# the baseline gates parity, bench and pipeline share
MAX_ACCURACY_DROP_OPTION = click.option(
    "--max-accuracy-drop-pt", type=Finite(0, 100), default=0.5, show_default=True,
    help="With --baseline: the most a row's top-1 may fall, in percentage points.")
MAX_LATENCY_REGRESSION_OPTION = click.option(
    "--max-latency-regression-pct", type=Finite(0, 1000), default=10.0, show_default=True,
    help="With --baseline: a p50 this much slower fails, when the 95 % confidence interval of the "
    "ratio lies wholly past it (inconclusive when it straddles).")


def writable(json_path: Path | None, reads: tuple = (), guards: tuple = (), makes: tuple = (),
             **files: Path | None) -> None:
    """Output paths are checked before the work, so a bad one costs nothing (exit 2). Only
    --json writes to standard output (-); report files named by option (`html=...`) may not.
    A device or pipe (/dev/null, /dev/stdout) is written through, anything else that is not a
    regular file is refused, and so is an output that is a file the command `reads` (a data
    folder: anything in it), a file it `makes`, an artifact of a work dir in `guards`, or
    another output (`outputs.refuse_clobbering`)."""
    from ..artifacts import ensure_writable_dir
    from ..outputs import OutputRefused, hold_pipe, output_target, refuse_clobbering
    for option, path in files.items():
        if path is not None and str(path) == "-":
            raise BadInput(f"--{option} - would write a file named '-': give --{option} a file "
                           "name (only --json writes to standard output)")
    outputs = {f"--{option}": path for option, path in {"json": json_path, **files}.items()}
    ctx = click.get_current_context(silent=True)
    bare_onnx = ctx.meta.get(BARE_ONNX) if ctx else None  # the file a scratch work dir came from
    try:
        for path in outputs.values():
            if path is not None and str(path) != "-":
                stream, target = output_target(path)
                if not stream:
                    ensure_writable_dir(target.parent)
        refuse_clobbering(outputs, (*reads, bare_onnx), makes, guards)
        for path in outputs.values():
            if path is not None and str(path) != "-":
                hold_pipe(path)
    except OutputRefused as exc:
        raise BadInput(str(exc)) from None


def data_paths(*specs: str | None) -> tuple[Path, ...]:
    """The files and folders data specs read (imagefolder:PATH, images:PATH, npy:X,Y), so no
    output lands among them."""
    paths = []
    for spec in specs:
        kind, _, rest = (spec or "").partition(":")
        if kind in ("imagefolder", "images"):
            paths.append(Path(rest))
        elif kind == "npy":
            paths += [Path(p) for p in rest.split(",") if p]
    return tuple(paths)


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_sizes(value: str | None, option: str) -> list[int] | None:
    """A comma list of batch sizes, or None for the model's own profile."""
    if value is None:
        return None
    try:
        sizes = [int(b) for b in csv_list(value)]
    except ValueError:
        raise BadInput(f"{option} takes whole numbers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise BadInput(f"{option} must list batch sizes of at least 1")
    return sizes


def _float3(value: str | None, option: str):
    if value is None:
        return None
    try:
        numbers = [float(v) for v in csv_list(value)]
    except ValueError:
        numbers = []
    if len(numbers) != 3 or not all(map(math.isfinite, numbers)):
        raise BadInput(f"{option} takes three finite numbers, one per RGB channel (e.g. 0.5,0.5,0.5), "
                       f"got {value!r}")
    return numbers


# ---- export --------------------------------------------------------------------------------

def default_out(source: str) -> Path:
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


def export_request(options: dict) -> dict:
    """The shared export options, parsed: what `prepare_export` takes."""
    return {**options, "mean": _float3(options["mean"], "--mean"),
            "std": _float3(options["std"], "--std")}


TARGET_NAMES = ["jetpack5", "jetpack6", "x86-trt10", "x86-trt11", "triton", "deepstream"]
TARGETS_HELP = ("jetpack5 = TensorRT 8.5 (opset <= 17), jetpack6 = TensorRT 10.3, x86-trt10, "
                "x86-trt11; triton = a Triton model repository too; deepstream = JetPack 6 plus "
                "nvinfer and deepstream-app configs (needs one std for all channels, or "
                "export --fold-normalization).")


def print_parity(report: dict) -> None:
    from ..parity import report as reports
    stdout.print(reports.table(report))
    for row in report["candidates"]:
        if row["status"] == "skipped":
            stdout.print(f"[yellow]skipped[/] {row['backend']} {row['precision']}: {escape(row['reason'])}")
    compared = report.get("baseline")
    if compared:
        table = Table(title=f"against {escape(compared['baseline'])}: change in points, gate "
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


