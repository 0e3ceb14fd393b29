"""Measuring commands: `parity` (accuracy and agreement, gated), `bench` (latency, power),
`report` (many runs on one page)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import console
from ..console import emit_json, note, stdout, wrote
from ..errors import BadInput
from ..runtime.providers import CUDA_INT8
from ..verdict import judge
from .common import (DEFAULT_DATA, DEVICE_OPTION, JSON_OPTION, MAX_ACCURACY_DROP_OPTION, Finite,
                     MAX_LATENCY_REGRESSION_OPTION, ORT_PROVIDERS_OPTION, PRECISIONS_OPTION, cli,
                     csv_list, data_paths, parse_sizes, print_parity, resolve_workdir, writable)


# ---- parity / bench / report -------------------------------------------------------------

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


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=resolve_workdir)
@click.option("--data", "data_spec",
              help="Evaluation data spec (labels give accuracy; without them only agreement) "
              + DEFAULT_DATA["test"])
@click.option("--limit", type=int, help="Use the first N images only.")
@click.option("--backends", help="Comma list of torch, ort, trt [all; skipped ones are reported].")
@PRECISIONS_OPTION
@click.option("--batch-size", type=int, help="Images per batch [32, within the model's batch profile].")
@DEVICE_OPTION
@ORT_PROVIDERS_OPTION
@click.option("--cuda-graph", is_flag=True,
              help="Also replay each GPU row as a CUDA graph on every batch; its graph_max_abs "
              "gate holds the replayed logits equal to the eager ones.")
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
@MAX_ACCURACY_DROP_OPTION
def parity(workdir, data_spec, limit, backends, precisions, batch_size, device, ort_providers,
           cuda_graph, thresholds, gates, agreement, json_path, markdown, junit, html, baseline,
           max_accuracy_drop_pt) -> None:
    """Run one evaluation set through PyTorch fp32 (the reference) and every other backend x
    precision; compare logits, agreement and accuracy; gate; report.

    fp32 is IEEE fp32 on every backend (TF32 off in torch, use_tf32=0 on ONNX Runtime's CUDA,
    TensorRT's TF32 flag cleared); tf32 names that math mode (GPUs of compute capability 8.0+).
    Each row is labelled by what ran: the provider ONNX Runtime really used, graph or eager.

    \b
    Gates (percent and points, as their names say; override with --thresholds FILE or --gate):
      every row: no NaN or inf logits
      fp32: min_top1_agreement_pct 100, max_abs 1e-3
      tf32, fp16: min_top1_agreement_pct 99.5, max_accuracy_drop_pt 0.1
      int8: min_top1_agreement_pct 95, min_cosine 0.99, max_accuracy_drop_pt 1,
            min_relative_accuracy_pct 99

    Exit 0 when every gate holds, 1 when one fails, 2 on bad usage, 3 when a backend named
    with --backends (or --ort-providers) cannot run here, or nothing asked for can;
    --precisions only narrows what runs.

    \b
    Examples:
      resnet-edge parity artifacts/resnet20-digits --data digits:test
      resnet-edge parity artifacts/resnet50 --data imagefolder:/data/imagenet/val --limit 5000 \\
          --backends torch,ort,trt --precisions fp32,fp16,int8 \\
          --json out/parity.json --markdown out/parity.md --junit out/junit.xml --html out/parity.html
    """
    from ..parity import report as reports
    from ..parity.gates import load_thresholds
    from ..parity.run import run_parity

    from ..parity.baseline import compare, read_baseline
    from ..parity.run import candidates
    candidates(_backends(backends, ort_providers), _precisions(precisions, device))  # before the data
    table_of_gates = load_thresholds(thresholds, _gate_overrides(gates))
    writable(json_path, (baseline, thresholds, *data_paths(data_spec)), (workdir,),
             markdown=markdown, junit=junit, html=html)
    old = read_baseline(baseline) if baseline else None  # checked before the work
    named = _named_backends(backends, ort_providers)
    cpu_fp16 = "torch" in csv_list(backends or "") and "fp16" in csv_list(precisions or "")
    with console.Progress("parity", "images") as bar:
        result = run_parity(workdir, data_spec,
                            backends=_backends(backends, ort_providers),
                            precisions=_precisions(precisions, device),
                            thresholds=table_of_gates, limit=limit, batch_size=batch_size,
                            device=device, explicit=bool(named) or precisions is not None,
                            named_backends=named, cpu_fp16=cpu_fp16,
                            progress=bar.update, keep_disagreements=html is not None,
                            agreement=agreement, cuda_graph=cuda_graph,
                            before_pass=_comparable_with(old, baseline))
    if old is not None:
        result["baseline"] = compare(result, old, str(baseline), max_accuracy_drop_pt)
    print_parity(result)
    for path, writer in ((markdown, reports.write_markdown), (junit, reports.write_junit),
                         (html, reports.write_html)):
        if path:
            wrote(path, *writer(result, path))
    emit_json(reports.public(result), json_path)
    judge(result)


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=resolve_workdir)
@click.option("--batch-sizes", help="Comma list of batch sizes [the model's min, opt and max batch].")
@click.option("--iterations", type=int,
              help="Timed iterations per backend and batch size [100, or as many as fit --budget, "
              "said; at least 10].")
@click.option("--budget", type=Finite(1e-3, None), default=300.0, show_default=True, metavar="SECONDS",
              help="What a bench with no --iterations may take: each row is probed first, and the "
              "iterations are fitted to this, or the bench refused before the timed runs.")
@click.option("--warmup", type=int, default=10, show_default=True,
              help="Untimed iterations first, per backend and batch size.")
@click.option("--backends", help="Comma list of torch, ort, trt [all that can run here].")
@PRECISIONS_OPTION
@DEVICE_OPTION
@ORT_PROVIDERS_OPTION
@click.option("--cuda-graph", is_flag=True,
              help="Also run each GPU backend and batch size as a replayed CUDA graph (a +graph "
              "row: torch.cuda.CUDAGraph, ONNX Runtime's enable_cuda_graph, TensorRT's enqueueV3 "
              "captured as trtexec --useCudaGraph does) and print graph/eager ratios.")
@click.option("--baseline", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="An earlier `bench --json` report (main's, say) of this model on this machine: "
              "each latency is compared with it, noise and all; exit 1 on a regression.")
@MAX_LATENCY_REGRESSION_OPTION
@click.option("--power", is_flag=True,
              help="Also measure energy per row: every rail tegrastats reports on a Jetson (average "
              "mW and mJ per image); on an x86 GPU NVML's energy counter over at least 2 s of the "
              "row's own work (nvidia-smi's 1-second average where the GPU has no counter). "
              "Where none exists it says so in one line and the bench runs without it.")
@JSON_OPTION
def bench(workdir, batch_sizes, iterations, budget, warmup, backends, precisions, device, ort_providers,
          cuda_graph, baseline, max_latency_regression_pct, power, json_path) -> None:
    """Latency per backend x precision x batch size: warm-up, then timed iterations with the
    device synchronized. Reports mean, p50, p90, p99, std and images/s (from the p50) host to
    host, and device compute alone where the backend allows it (GPU backends). A bench
    expected to take over 30 s says how long before it starts; one with no --iterations is
    fitted to --budget (5 minutes: on a CPU runner every backend x precision x batch size at
    100 iterations can take an hour).

    \b
    Example:
      resnet-edge bench artifacts/resnet50 --batch-sizes 1,8,32 --iterations 200
    """
    from ..bench import compare_to_baseline, read_baseline, refuse_incomparable, run_bench

    sizes = parse_sizes(batch_sizes, "--batch-sizes")
    pairs = _bench_pairs(_backends(backends, ort_providers), _precisions(precisions, device))
    if (iterations is not None and iterations < 1) or warmup < 0:
        raise BadInput("--iterations must be at least 1, --warmup at least 0")
    writable(json_path, (baseline,), (workdir,))
    old = read_baseline(baseline) if baseline else None  # checked before the work
    if old is not None:
        if iterations is not None and iterations < 2:
            raise BadInput("--baseline compares latency samples: give --iterations 2 or more")
        onnx_path = workdir / "model.onnx"
        if onnx_path.is_file():  # another model or machine is refused before the bench, not after
            from ..export.metadata import read_card
            from ..runtime.latency import describe_machine
            card = read_card(onnx_path)
            refuse_incomparable(old, card.to_dict() if card else {}, describe_machine(), str(baseline))
    named = _named_backends(backends, ort_providers)
    cpu_fp16 = "torch" in csv_list(backends or "") and "fp16" in csv_list(precisions or "")
    with console.steps() as step:
        result = run_bench(workdir, pairs, sizes, iterations=iterations, warmup=warmup, device=device,
                           budget=budget, cpu_fp16=cpu_fp16, power=power, cuda_graph=cuda_graph,
                           named_backends=named, step=step, notice=note)
    if old is not None:
        result["baseline"] = compare_to_baseline(result, old, str(baseline), max_latency_regression_pct)
    _print_bench(result)
    emit_json(result, json_path)
    judge(result)


RUN_COLUMN = 36


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
    from ..artifacts import write_text_atomic
    from ..parity import fleet

    writable(json_path, reports, html=html, markdown=markdown)
    runs = fleet.read_reports(list(reports))
    keys, cells = fleet.matrix(runs)
    table = Table(title=f"{escape(runs[0][1]['model']['arch'])}: {len(runs)} runs")
    for col in ("kind", "backend", "batch"):
        table.add_column(col)
    for name, (_, run) in zip(fleet.names(runs), runs):
        # a run's cells fold at RUN_COLUMN characters: three runs of long cells were 260 wide
        table.add_column(escape(f"{name}\n{fleet.where(run)}"), max_width=RUN_COLUMN, overflow="fold")
    for kind, backend, precision, batch in keys:
        table.add_row(kind, f"{backend} {precision}", str(batch),
                      *(escape(text) for text in cells[(kind, backend, precision, batch)]))
    stdout.print(table)
    differ = fleet.differences(runs)
    if differ:
        table = Table(title="where the runs differ")
        table.add_column("what")
        for name in fleet.names(runs):
            table.add_column(escape(name))
        for field, values in differ:
            table.add_row(field, *map(escape, values))
        stdout.print(table)
    if html:
        write_text_atomic(html, fleet.page(runs, html))
    if markdown:
        write_text_atomic(markdown, fleet.markdown(runs))
    wrote(html, markdown)
    emit_json(fleet.summary(runs), json_path)


def _comparable_with(old: dict | None, where):
    """The check run_parity makes once it knows the model and the images, before its pass: a
    baseline of another model or of other images is refused then, not after the whole run."""
    if old is None:
        return None
    from ..parity.baseline import refuse_incomparable
    return lambda model, data: refuse_incomparable(old, model, data, str(where))


def _named_backends(backends: str | None, ort_providers: str | None) -> list[str]:
    from ..parity.run import named_backends
    return named_backends(csv_list(backends) if backends is not None else None,
                          csv_list(ort_providers) if ort_providers is not None else None)


def _backends(backends: str | None, ort_providers: str | None) -> list[str]:
    from ..parity.run import with_providers
    return with_providers(csv_list(backends or "torch,ort,trt"),
                          csv_list(ort_providers) if ort_providers is not None else None)


def _precisions(precisions: str | None, device: str) -> list[str]:
    from ..parity.run import default_precisions
    return csv_list(precisions) if precisions else default_precisions(device)


def _bench_pairs(backends: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    from ..parity.run import REFERENCE, candidates
    pairs = candidates(backends, precisions)
    wants_reference = "torch" in backends and "fp32" in precisions
    return [REFERENCE, *pairs] if wants_reference else pairs


def _print_bench(result: dict) -> None:
    rows = result["results"]
    # what ran, not what the machine has: rows pinned to the CPU on a GPU machine are CPU times
    on_cpu = bool(rows) and all("(cpu" in r["device"].lower() for r in rows)
    table = Table(title=f"{escape(result['model']['arch'])} latency ({result['iterations']} iterations after "
                        f"{result['warmup']} warm-up)",
                  caption="this CPU's latency, not a GPU's or a Jetson's" if on_cpu else None)
    for col in ("backend", "batch", "mean ms", "p50", "p90", "p99", "std", "img/s (p50)", "device p50"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in result["results"]:
        h, d = r["host_to_host"], r["device_compute"]
        table.add_row(r["device"], str(h["batch_size"]), f"{h['mean_ms']:.3f}", f"{h['p50_ms']:.3f}",
                      f"{h['p90_ms']:.3f}", f"{h['p99_ms']:.3f}", f"{h['std_ms']:.3f}",
                      f"{h['images_per_s']:.1f}", f"{d['p50_ms']:.3f}" if d else "-")
    stdout.print(table)
    slower = _int8_slower_on_cpu(rows)
    if slower:
        note(f"int8 ran slower than fp32 here ({slower}): on a CPU, ONNX Runtime's int8 kernels "
             f"({result['machine'].get('int8_arithmetic') or 'this CPU'}) and the Q/DQ around them "
             "can cost more than fp32's; that says nothing of TensorRT's int8 on a GPU or Jetson")
    if any(CUDA_INT8 in r["device"] for r in rows):
        note(f"ort int8 on CUDA ran {CUDA_INT8}: the CUDA provider has no integer convolution, so "
             "those rows emulate int8's accuracy but not its speed; TensorRT's int8 rows are int8")
    for s in result["skipped"]:
        batch = f" batch {s['batch_size']}" if "batch_size" in s else ""
        stdout.print(f"[yellow]skipped[/] {s['backend']} {s['precision']}{batch}: {escape(s['reason'])}")
    if result.get("graph_speedup"):
        table = Table(title="graph/eager: how much faster a replayed CUDA graph is (p50 eager / p50 graph)")
        for col in ("backend", "batch", "device eager ms", "device graph ms", "device x",
                    "host x"):
            table.add_column(col, justify="left" if col == "backend" else "right")
        for g in result["graph_speedup"]:
            d, h = g.get("device_compute"), g.get("host_to_host")
            table.add_row(f"{g['backend']} {g['precision']}", str(g["batch_size"]),
                          f"{d['eager_p50_ms']:.3f}" if d else "-", f"{d['graph_p50_ms']:.3f}" if d else "-",
                          f"{d['ratio']:.2f}" if d else "-", f"{h['ratio']:.2f}" if h else "-")
        stdout.print(table)
    if result.get("power", {}).get("source"):
        _print_power(result)
    compared = result.get("baseline")
    if compared:
        table = Table(title=f"against {escape(compared['baseline'])}: p50 ratio (new / baseline), 95 % "
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


def _int8_slower_on_cpu(rows: list[dict]) -> str:
    """'ort batch 8: 3.10 vs 1.20 ms' for each CPU int8 row slower than its fp32 row, or ''."""
    fp32 = {(r["backend"], r["host_to_host"]["batch_size"]): r for r in rows if r["precision"] == "fp32"}
    said = []
    for row in rows:
        base = fp32.get((row["backend"], row["host_to_host"]["batch_size"]))
        if (row["precision"].startswith("int8") and base and "(cpu" in row["device"].lower()
                and row["host_to_host"]["p50_ms"] > base["host_to_host"]["p50_ms"]):
            said.append(f"{row['backend']} {row['precision']} batch {row['host_to_host']['batch_size']}: "
                        f"{row['host_to_host']['p50_ms']:.2f} vs {base['host_to_host']['p50_ms']:.2f} ms")
    return "; ".join(said)


def _print_power(result: dict) -> None:
    power = result["power"]
    table = Table(title=f"power from {power['source']}: {power['covers']}")
    # NVML's counter: the stretch each row ran for its energy, and how often the counter moved
    readings = "counter updates / s" if power["source"] == "nvml" else "readings"
    for col in ("backend", "batch", readings, "rail", "average W", "mJ / image"):
        table.add_column(col, justify="left" if col in ("backend", "rail") else "right")
    for r in result["results"]:
        p, batch = r["power"], str(r["host_to_host"]["batch_size"])
        count = f"{p['samples']} / {p['seconds']:.1f}" if "seconds" in p else str(p["samples"])
        if "reason" in p:
            table.add_row(r["device"], batch, count, f"[yellow]{escape(p['reason'])}[/]", "-", "-")
            continue
        for rail, mw in p["rails_mw"].items():
            name = f"{rail} (total)" if rail == p["total_rail"] else rail
            table.add_row(r["device"], batch, count, name, f"{mw / 1e3:.2f}",
                          f"{p['mj_per_image'][rail]:.2f}")
    stdout.print(table)
