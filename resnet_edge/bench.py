"""`bench`: latency per backend x precision x batch size, on seeded inputs."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from . import strictjson
from .artifacts import open_dir
from .errors import BadInput, number_in, well_formed, whole
from .export import check_batch_sizes, export_profile, open_workdir
from .runtime import power as energy
from .runtime import regression
from .backends import BackendUnavailable, artifact_hashes, open_backend
from .runtime.gpu import placed, resolve_device
from .runtime.latency import describe_machine, measure

SCHEMA = "resnet-edge.bench/1"
LONG_BENCH_S = 30.0
DEFAULT_ITERATIONS = 100  # timed iterations a row, where the budget allows
MIN_FITTED_ITERATIONS = 10  # fewer than this says little: past the budget even so, refused
DEFAULT_BUDGET_S = 300.0  # a CPU runner's default bench (ResNet-18, 15 rows) was 52 minutes
PROBE_RUNS = 5
PROBE_BUDGET_S = 0.5  # per row: a slow row is probed once or twice, a fast one PROBE_RUNS times
ESTIMATE_SLACK = 0.25  # a pace further than this from the estimate is said


def run_bench(workdir: str | Path, pairs: list[tuple[str, str]], batch_sizes: list[int] | None, *,
              iterations: int | None, warmup: int, device: str = "auto", cpu_fp16: bool = False,
              budget: float | None = None,
              power: bool = False, cuda_graph: bool = False, named_backends: list[str] = (),
              step: Callable[[str], None] = lambda m: None,
              notice: Callable[[str], None] = lambda m: None) -> dict:
    """Latency of every backend x batch size. One probe run of each comes first, so a long
    bench says how long before it starts (`notice`, when it is over LONG_BENCH_S). Batch sizes
    default to the model's profile (min, opt, max) and must lie inside it. With `power`, each
    row also gets its energy (NVML's counter over a stretch of at least 2 s of its own work on an
    x86 GPU) or the power read while it ran (tegrastats, nvidia-smi), or why not. With
    `cuda_graph`, each GPU backend and batch size also runs as a replayed CUDA graph (a
    `+graph` row), and `graph_speedup` holds eager/graph ratios. `named_backends`: those the
    caller named, whose skipped rows are the command's exit 3 (verdict.judge).

    `iterations` None: as many as fit `budget` (from the probes), up to DEFAULT_ITERATIONS, said
    where fewer; refused before the timed runs where even MIN_FITTED_ITERATIONS would not fit.
    Iterations given run as given, however long (said when over LONG_BENCH_S)."""
    if not ((iterations is None or (whole(iterations) and iterations >= 1)) and whole(warmup) and warmup >= 0):
        raise BadInput("--iterations must be at least 1, --warmup at least 0")
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise BadInput(f"--budget must be a positive number of seconds, got {budget!r}")
    resolve_device(device)
    workdir = open_dir(workdir)  # once, handed down: its manifest read and each file hashed once
    card, model = open_workdir(workdir)
    profile = export_profile(workdir)
    if batch_sizes is None:
        batch_sizes = sorted({profile["min"], profile["opt"], profile["max"]})
    check_batch_sizes(profile, batch_sizes, "--batch-sizes")
    rng = np.random.default_rng(0)
    inputs = {size: rng.standard_normal((size, *card.preprocess.input_shape), dtype=np.float32)
              for size in batch_sizes}
    opened, skipped = [], []
    for name, precision in pairs:
        try:
            opened.append((name, precision, open_backend(
                name, precision, workdir, model=model, device=device, cpu_fp16=cpu_fp16,
                batch_range=(profile["min"], profile["max"]), profile=profile, purpose="bench")))
        except BackendUnavailable as exc:
            skipped.append({"backend": name, "precision": precision, "reason": str(exc)})
    # the cost of each measurement, from the fastest of PROBE_RUNS runs of it (sustained runs
    # go at about that pace; one run alone misjudged a busy machine by half): what `notice`
    # says before, and what the bench holds itself to as it goes, saying so when it is off
    if iterations is None and budget is not None and opened:
        rows = len(opened) * len(batch_sizes)
        notice(f"bench: {rows} measurement{'s' if rows != 1 else ''} ({len(opened)} x {len(batch_sizes)} "
               f"batch sizes), each probed first to fit the run to --budget {_duration(budget)}")
    per_iteration = {}
    for _, _, backend in opened:
        for size in batch_sizes:
            step(f"probing {backend.label} batch {size}")
            backend.run(inputs[size])  # the first run sets up what later runs reuse
            runs = []
            # up to PROBE_RUNS, but no more than PROBE_BUDGET_S of them: a ResNet-18 on a CPU
            # spent 57 s probing before it could say how long the bench would take
            while len(runs) < PROBE_RUNS and (not runs or sum(runs) < PROBE_BUDGET_S):
                start = time.perf_counter()
                backend.run(inputs[size])
                runs.append(time.perf_counter() - start)
            passes = 2 if backend.separates_device_time else 1
            per_iteration[backend.label, size] = min(runs) * passes
    iterations = _fitted(iterations, warmup, sum(per_iteration.values()), budget, notice)
    expected = {key: cost * (warmup + iterations) for key, cost in per_iteration.items()}
    estimate = sum(expected.values())
    if estimate > LONG_BENCH_S:
        notice(f"bench will take about {_duration(estimate)} ({len(opened)} backends x "
               f"{len(batch_sizes)} batch sizes x {iterations} iterations, from up to {PROBE_RUNS} "
               "probe runs each); fewer --iterations or --batch-sizes make it shorter")
    results, spent, planned, warned, power_note = [], 0.0, 0.0, False, None
    with ExitStack() as stack:
        sampler = counter = source = None
        if power:
            try:
                on_gpu = placed(device) == "cuda"
                board = energy.cuda_device() if on_gpu else None
                source = energy.find_source(gpu=on_gpu, device=board)
                if source.name == energy.NVML.name:
                    counter = energy.EnergyCounter(board)
                    stack.callback(counter.close)
                else:
                    sampler = stack.enter_context(energy.Sampler(source))
            except energy.PowerUnavailable as exc:
                power_note = {"reason": str(exc)}
                notice(str(exc))
        for name, precision, eager in opened:
            for size in batch_sizes:
                backends = [eager]
                if cuda_graph:
                    try:
                        backends.append(stack.enter_context(_closing(
                            eager.graph(size, card.preprocess.input_shape))))
                    except BackendUnavailable as exc:
                        skipped.append({"backend": f"{name}+graph", "precision": precision,
                                        "batch_size": size, "reason": str(exc)})
                for backend in backends:
                    step(f"{backend.label} batch {size}")
                    start, began = time.perf_counter(), time.monotonic()
                    m = measure(backend, inputs[size], iterations=iterations, warmup=warmup)
                    spent += time.perf_counter() - start
                    planned += expected[eager.label, size]
                    row = {"backend": backend.name, "precision": precision, "device": backend.label,
                           "int8_path": backend.int8_path, "settings": backend.settings, **m}
                    if counter:
                        row["power"] = energy.energy_stretch(lambda: backend.run(inputs[size]), size,
                                                             counter.read, covers=source.says)
                    elif sampler:
                        row["power"] = _power(sampler, began, time.monotonic(), m["host_to_host"])
                    results.append(row)
                    pace = spent / planned if planned else 1.0
                    left = (estimate - planned) * pace
                    if estimate > LONG_BENCH_S and not warned and abs(pace - 1) > ESTIMATE_SLACK and left > 1:
                        warned = True  # said once: the machine is busier (or idler) than the probes saw
                        notice(f"bench is running at {pace:.1f}x its estimate: about {_duration(left)} "
                               "left, not as first said")
            eager.close()
    pace = spent / estimate if estimate else 1.0
    if estimate > LONG_BENCH_S and not warned and abs(pace - 1) > ESTIMATE_SLACK:
        # too late to say while running (the rest was under a second): said now, as measured
        notice(f"bench took {_duration(spent)}, {pace:.1f}x its estimate of {_duration(estimate)}")
    ran = list(dict.fromkeys((r["backend"], r["precision"]) for r in results))
    return {"schema": SCHEMA, "model": card.to_dict(), "artifacts": artifact_hashes(workdir, ran),
            "machine": describe_machine(), "estimated_seconds": round(estimate, 2),
            "measured_seconds": round(spent, 2),
            "iterations": iterations, "warmup": warmup, "results": results, "skipped": skipped,
            "named_backends": list(named_backends),
            **({"graph_speedup": graph_speedup(results)} if cuda_graph else {}),
            **({"power": power_note or _power_source(source, counter)} if power else {})}


def _fitted(iterations: int | None, warmup: int, per_iteration: float, budget: float | None,
            notice: Callable[[str], None]) -> int:
    """The timed iterations a row: as given, or as many as fit the budget (see run_bench)."""
    if iterations is not None:
        return iterations
    if budget is None or per_iteration <= 0:
        return DEFAULT_ITERATIONS
    fits = int(budget / per_iteration) - warmup
    if fits >= DEFAULT_ITERATIONS:
        return DEFAULT_ITERATIONS
    if fits < MIN_FITTED_ITERATIONS:
        least = per_iteration * (warmup + MIN_FITTED_ITERATIONS)
        raise BadInput(f"bench would take about {_duration(least)} even at {MIN_FITTED_ITERATIONS} "
                       f"iterations a row, past --budget {_duration(budget)}: measure fewer rows "
                       "(--backends, --precisions, --batch-sizes), or give --budget "
                       f"{int(least) + 1} or --iterations to run it as it is")
    notice(f"bench: {DEFAULT_ITERATIONS} iterations a row would take about "
           f"{_duration(per_iteration * (warmup + DEFAULT_ITERATIONS))}, past --budget "
           f"{_duration(budget)}: {fits} iterations a row instead (give --iterations to choose)")
    return fits


def _power_source(source, counter) -> dict:
    said = {"source": source.name, "covers": source.says}
    return {**said, "min_seconds": energy.MIN_ENERGY_S} if counter else said


@contextmanager
def _closing(backend):
    try:
        yield backend
    finally:
        backend.close()


def graph_speedup(results: list[dict]) -> list[dict]:
    """Each +graph row against its eager row: p50 eager over p50 graph, device compute (the
    work alone) and host to host, so > 1 is how much faster the replayed graph is."""
    eager = {(r["backend"], r["precision"], r["host_to_host"]["batch_size"]): r for r in results}
    pairs = []
    for row in results:
        if not row["backend"].endswith("+graph"):
            continue
        base = eager.get((row["backend"].removesuffix("+graph"), row["precision"],
                          row["host_to_host"]["batch_size"]))
        if base is None:
            continue
        entry = {"backend": base["backend"], "precision": row["precision"],
                 "batch_size": row["host_to_host"]["batch_size"]}
        for part in ("device_compute", "host_to_host"):
            if base[part] and row[part]:
                entry[part] = {"eager_p50_ms": base[part]["p50_ms"], "graph_p50_ms": row[part]["p50_ms"],
                               "ratio": round(base[part]["p50_ms"] / row[part]["p50_ms"], 3)}
        pairs.append(entry)
    return pairs


def _power(sampler: energy.Sampler, began: float, ended: float, host: dict) -> dict:
    """The readings taken while one row ran (warm-up and timed loops: one workload), per image
    at the host-to-host mean, since energy is spent through every iteration, not the median's."""
    readings = sampler.between(began, ended)
    summary = energy.summarize(sampler.source, readings, ended - began,
                               host["mean_ms"] / 1e3 / host["batch_size"])
    stopped = sampler.stopped()
    if "reason" in summary and stopped:
        summary["reason"] = stopped
    elif "reason" in summary and sampler.refused:
        summary["reason"] = (f"{sampler.source.name} printed {sampler.refused} lines that are no "
                             f"reading (unreadable, or past {energy.MAX_MW // 1_000_000} kW or "
                             f"{energy.MAX_RAILS} rails), so power was not measured")
    return summary


def _duration(seconds: float) -> str:
    """A time as a person reads it: tenths below 10 s (never "0 s"), minutes from 2 min."""
    return (f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s" if seconds < 120
            else f"{seconds / 60:.0f} min")


# what makes two latencies comparable: the same hardware, or there is nothing to compare; other
# libraries are what a regression check is for, so they are said, not refused
HARDWARE = ("cpu", "cores", "gpu", "jetson")  # jetson: L4T release, power mode, locked clocks


def read_baseline(path: str | Path) -> dict:
    """A bench report to compare with, checked: JSON, this format, with latency samples."""
    try:
        report = strictjson.read_report(path, SCHEMA, "baseline")
    except ValueError as exc:
        raise BadInput(f"{exc}; give a `bench --json` report") from None
    with well_formed(path, "baseline"):
        has_samples = any(r["host_to_host"].get("samples_ms") for r in report["results"])
    if not has_samples:
        raise BadInput(f"baseline {path} holds no latency samples (made before bench kept them); "
                       "run bench on the baseline again")
    return report


def refuse_incomparable(baseline: dict, model: dict, machine: dict, where: str) -> None:
    """A baseline of another model, or from other hardware, refused naming what differs:
    checked before a bench runs, from the model's card and this machine."""
    with well_formed(where, "baseline"):
        old_model, old_machine = baseline["model"], baseline["machine"]
        for key in ("arch", "num_classes"):
            if model.get(key) != old_model.get(key):
                raise BadInput(f"baseline {where} is of another model ({key} {old_model.get(key)!r}, "
                               f"not {model.get(key)!r}); compare runs of one model")
        for key in HARDWARE:
            old, now = old_machine.get(key), machine.get(key)
            if old == now:
                continue
            if isinstance(old, dict) and isinstance(now, dict):  # a Jetson's conditions, by name
                part = next(k for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k))
                key, old, now = f"{key} {part}", old.get(part), now.get(part)
            raise BadInput(f"baseline {where} ran on other hardware ({key} {old!r}, here {now!r}): "
                           "latencies from different machines are not a regression check")


def compare_to_baseline(result: dict, baseline: dict, where: str,
                        max_regression_pct: float = regression.MAX_REGRESSION_PCT) -> dict:
    """Each (backend, precision, batch) both reports measured, judged from their samples; a
    baseline from other hardware, or of another model, is refused naming what differs."""
    max_regression_pct = number_in(max_regression_pct, 0, 1000, "the latency regression gate (%)")
    refuse_incomparable(baseline, result["model"], result["machine"], where)
    with well_formed(where, "baseline"):
        return _compare(result, baseline, where, max_regression_pct)


def slowdown(row: dict) -> str:
    """A regression row as the gate says it: where, the p50 ratio, its interval and the limit."""
    return (f"{row['device']} batch {row['batch_size']} p50 x{row['ratio']:.2f} (95 % interval "
            f"{row['low']:.2f}-{row['high']:.2f}, limit x{row['limit']:.2f})")


def _compare(result: dict, baseline: dict, where: str, max_regression_pct: float) -> dict:
    machine, old_machine = result["machine"], baseline["machine"]
    versions, old_versions = machine.get("versions", {}), old_machine.get("versions", {})
    differs = [f"{name} {old_versions.get(name)} -> {versions.get(name)}"
               for name in sorted(set(versions) | set(old_versions))
               if versions.get(name) != old_versions.get(name)]
    # only a file both runs measured and whose sha256 changed: a bench of fewer backends records
    # fewer files, which is not a change
    old_files, files = baseline.get("artifacts") or {}, result["artifacts"]
    changed = sorted(name for name in set(files) & set(old_files) if files[name] != old_files[name])
    if changed:
        differs.append(f"model files ({', '.join(changed)})")
    old_rows = {(r["backend"], r["precision"], r["host_to_host"]["batch_size"]): r
                for r in baseline.get("results", [])}
    rows = []
    for row in result["results"]:
        key = (row["backend"], row["precision"], row["host_to_host"]["batch_size"])
        old = old_rows.get(key)
        entry = {"backend": key[0], "precision": key[1], "batch_size": key[2], "device": row["device"]}
        if old is None or not old["host_to_host"].get("samples_ms"):
            rows.append({**entry, "verdict": "no baseline"})
            continue
        rows.append({**entry, **regression.judge(old["host_to_host"]["samples_ms"],
                                                 row["host_to_host"]["samples_ms"],
                                                 max_regression_pct)})
    return {"baseline": where, "max_regression_pct": max_regression_pct, "differs": differs,
            "rows": rows, "regressions": [r for r in rows if r["verdict"] == "regression"]}

