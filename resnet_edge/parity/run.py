"""One evaluation set through the PyTorch fp32 reference and every other backend x precision,
streamed in batches, compared, gated."""

from __future__ import annotations

import base64
import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..artifacts import open_dir
from ..data import batches, data_for, match_classes, open_data
from ..errors import BadInput, GateFailed, MissingBackend, whole
from ..export import check_batch_sizes, export_profile, open_workdir
from ..export.metadata import quantization_info
from ..backends import (CPU_FP16, ORT_FILES, ORT_PROVIDER_BACKENDS, Backend, BackendUnavailable,
                        artifact_hashes, open_backend)
from ..runtime.gpu import placed, resolve_device, tf32_unavailable
from ..runtime.latency import LatencyStats, describe_machine
from .gates import GateResult, Thresholds, evaluate_gates, for_precision
from ..metrics import NEAR_TIE_FACTOR, Accuracy, LogitComparison

SCHEMA = "resnet-edge.parity/1"
DEFAULT_BATCH = 32
SKIPPED_LISTED = 20  # files of the evaluation folder skipped as not images, named in the report
SAVED_LOGITS = 32  # reference logits a report keeps, for a later run's baseline check
KEEP_DISAGREEMENTS = 12  # per candidate, for the HTML report's thumbnails
THUMBNAIL_PX = 96
# What each backend can run; torch int8 is not a thing this tool makes.
# int8-fp16: the int8 model with fp16 float parts, which strongly typed TensorRT builds from;
# TensorRT's own int8 engine is built from whichever int8 file its build plan picks.
# tf32: fp32 tensors with TF32 math (compute capability 8.0+): a GPU's, named as what it is.
PRECISIONS = ("fp32", "tf32", "fp16", "int8", "int8-fp16")
SUPPORTED = {"torch": ("fp32", "tf32", "fp16"), "ort": PRECISIONS, "trt": ("fp32", "tf32", "fp16", "int8"),
             **{name: PRECISIONS for name in ORT_PROVIDER_BACKENDS}}
REFERENCE = ("torch", "fp32")
ONNX_REFERENCE = ("ort", "fp32")  # for a bare ONNX file, which brings no PyTorch model
# what each kind of number in the report is in, said in the report itself: a share measured is a
# fraction, a gate's value is in its gate's unit, so a reader never takes 0.95 for 95 %
UNITS = {"metrics": "top1_agreement, top5_agreement and decisive lower_bound are fractions "
                    "(0..1); max_abs, mean_abs and p99_abs logit units; cosine has none",
         "accuracy": "top1, top5 and per_class are fractions (0..1); drop_pt percentage points",
         "gates": "value and threshold in the gate's own unit, as its name says: _pct percent "
                  "(99.5 means 99.5 %), _pt percentage points; cosine and max_abs none",
         "latency": "milliseconds (_ms) and images per second"}
AGREEMENT = ("raw", "decisive")


@dataclass
class _Row:
    backend: str
    precision: str
    runner: Backend | None = None
    reason: str = ""
    comparison: LogitComparison = field(default_factory=LogitComparison)
    accuracy: Accuracy = field(default_factory=Accuracy)
    seconds: list[float] = field(default_factory=list)
    disagreements: list[dict] = field(default_factory=list)
    # ORT-CPU's fused int8 kernels against the same model's Q/DQ as written (cpu recipe)
    fusion: LogitComparison | None = None
    # with cuda_graph: the same backend replaying a CUDA graph, against its own eager logits
    graph: Backend | None = None
    graph_reason: str = ""
    graph_comparison: LogitComparison = field(default_factory=LogitComparison)


def default_precisions(device: str = "auto") -> list[str]:
    """Every precision that can run on `device`: tf32 only on a GPU that has it."""
    return [p for p in PRECISIONS if p != "tf32" or not tf32_unavailable(placed(device))]


def with_providers(backends: list[str], ort_providers: list[str] | None) -> list[str]:
    """`ort` in the backend list as one ort-<provider> backend per provider named (tensorrt,
    cuda, cpu), so their rows stand side by side; unchanged without providers."""
    if not ort_providers:
        return backends
    for provider in ort_providers:
        if f"ort-{provider}" not in ORT_PROVIDER_BACKENDS:
            raise BadInput(f"unknown ONNX Runtime provider {provider!r}; use "
                           f"{', '.join(p.removeprefix('ort-') for p in ORT_PROVIDER_BACKENDS)}")
    if "ort" not in backends:
        raise BadInput("--ort-providers says where ONNX Runtime runs, but --backends leaves ort out")
    expanded = []
    for name in backends:
        expanded += [f"ort-{p}" for p in ort_providers] if name == "ort" else [name]
    return list(dict.fromkeys(expanded))


def named_backends(backends: list[str] | None, ort_providers: list[str] | None) -> list[str]:
    """The backends a caller named (`backends`, and ort-<provider> for each of `ort_providers`):
    the rows that must run (exit 3 where they cannot). Named precisions only narrow."""
    if backends is None and ort_providers is None:
        return []
    return with_providers(backends if backends is not None else ["ort"], ort_providers)


def candidates(backends: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    for what, names, known in (("backend", backends, SUPPORTED), ("precision", precisions, PRECISIONS)):
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise BadInput(f"{what}s are a list of names, e.g. {list(known)[:2]}; got {names!r}")
        for name in names:
            if name not in known:
                raise BadInput(f"unknown {what} {name!r}; use {', '.join(known)}")
    return [(b, p) for b in backends for p in precisions
            if p in SUPPORTED[b] and (b, p) != REFERENCE]


def run_parity(workdir: str | Path, data_spec: str | None, *, backends: list[str], precisions: list[str],
               thresholds: dict[str, Thresholds], limit: int | None = None,
               batch_size: int | None = None, device: str = "auto", explicit: bool = False,
               named_backends: list[str] = (),
               cpu_fp16: bool = False, keep_disagreements: bool = False,
               agreement: str = "raw", cuda_graph: bool = False,
               before_pass: Callable[[dict, dict], None] | None = None,
               progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """`batch_size` defaults to 32 within the model's batch profile (its one size if static).

    `before_pass(model card, data)`: called once the model and the images are known (data:
    spec, images, sha256 by content), before the pass: where a baseline of another model or of
    other images is refused (baseline.refuse_incomparable), not after the whole run.

    `explicit`: the caller named backends or precisions, so nothing at all able to run is an
    error (MissingBackend), said before the reference pass. `named_backends`: the backends named
    by the caller; a row of one of them that cannot run is listed in the summary's
    explicit_backends_missing (the command's exit 3). Named precisions only narrow what runs.

    With `cuda_graph`, every candidate on a GPU also replays a CUDA graph of itself on every
    batch, and its `graph_max_abs` gate holds the replayed logits to the eager ones: the same
    kernels, so the same numbers.

    With `keep_disagreements`, the first images where each candidate's top-1 differs from the
    reference's are kept as small PNGs in report["_thumbnails"] (index -> PNG bytes), for the
    HTML report; keys starting with "_" never go into the JSON."""
    if limit is not None and not (whole(limit) and limit >= 1):
        raise BadInput(f"--limit must be at least 1, got {limit!r}")
    if agreement not in AGREEMENT:
        raise BadInput(f"agreement {agreement!r} is not one of {', '.join(AGREEMENT)}")
    resolve_device(device)
    workdir = open_dir(workdir)  # once, handed down: its manifest read and each file hashed once
    card, model = open_workdir(workdir)
    profile = export_profile(workdir)
    if batch_size is None:
        batch_size = max(profile["min"], min(DEFAULT_BATCH, profile["max"]))
    check_batch_sizes(profile, [batch_size], "--batch-size")
    data_spec = data_for(card, "test", data_spec, "--data")
    source = open_data(data_spec, input_shape=card.preprocess.input_shape)
    match_classes(source, card.num_classes, card.class_names, f"the model ({card.arch})")
    n = len(source) if limit is None else min(limit, len(source))
    pairs = candidates(backends, precisions)
    digest = source.digest(n)
    if before_pass is not None:  # e.g. a baseline of another model or other images: refused now
        before_pass(card.to_dict(), {"spec": data_spec, "images": n, "sha256": digest})

    # a bare ONNX file has no PyTorch model: ONNX Runtime's fp32 run of the file is the reference
    reference_pair = REFERENCE if model is not None else ONNX_REFERENCE
    pairs = [p for p in pairs if p != reference_pair]
    reference = open_backend(*reference_pair, workdir, model=model, device=device)
    rows = []
    for name, precision in pairs:
        row = _Row(name, precision)
        try:
            row.runner = open_backend(name, precision, workdir, model=model, device=device,
                                      cpu_fp16=cpu_fp16, with_unfused=True,
                                      batch_range=(profile["min"], profile["max"]), profile=profile)
        except BackendUnavailable as exc:
            row.reason = str(exc)
        if cuda_graph and row.runner is not None:
            try:
                row.graph = row.runner.graph(batch_size, card.preprocess.input_shape)
            except BackendUnavailable as exc:
                row.graph_reason = str(exc)
        if row.runner is not None and row.runner.unfused is not None:
            row.fusion = LogitComparison()
        rows.append(row)
    ran = [r for r in rows if r.runner is not None]
    if explicit and not ran:  # said before the reference pass, not after it
        raise MissingBackend("nothing asked for can run, so nothing was compared: "
                             + "; ".join(f"{r.backend} {r.precision} ({r.reason})" for r in rows))

    progress(0, n)  # the total is known: a bar reads 0/64 from the start, not 0/?
    ref_accuracy, ref_seconds, sizes, ref_top1, ref_kept = Accuracy(), [], [], [], []
    thumbnails: dict[int, bytes] = {}
    labelled = source.has_labels
    done = 0
    for x, y in batches(source, card.preprocess, batch_size, indices=range(n)):
        batch, labels = x.numpy(), y.numpy()
        start = time.perf_counter()
        ref = reference.run(batch)
        ref_seconds.append(time.perf_counter() - start)
        sizes.append(len(batch))
        if not np.isfinite(ref).all():
            raise GateFailed(f"the PyTorch fp32 reference gives NaN or inf logits on images "
                             f"{done}-{done + len(batch) - 1} of {data_spec}: the model is broken, "
                             "so nothing can be compared with it")
        if labelled:
            ref_accuracy.update(ref, labels)
        ref_top1.extend(int(c) for c in ref.argmax(axis=1))
        ref_kept.append(ref[:max(0, SAVED_LOGITS - done)])
        for row in ran:
            start = time.perf_counter()
            out = row.runner.run(batch)
            row.seconds.append(time.perf_counter() - start)
            row.comparison.update(ref, out)
            if row.fusion is not None:
                row.fusion.update(row.runner.unfused.run(batch), out)
            if row.graph is not None:  # like for like: a short last batch padded for both
                same = out if len(batch) == row.graph.batch_size else \
                    row.runner.run(row.graph.padded(batch))[:len(batch)]
                row.graph_comparison.update(same, row.graph.run(batch))
            if labelled:
                row.accuracy.update(out, labels)
            if keep_disagreements:
                _keep_disagreements(row, ref, out, labels if labelled else None, done, thumbnails,
                                    batch, card.preprocess)
        done += len(batch)
        progress(done, n)
    for r in [reference, *(r.runner for r in ran), *(r.runner.unfused for r in ran if r.fusion),
              *(r.graph for r in ran if r.graph)]:
        r.close()

    ref_acc = _accuracy(ref_accuracy) if labelled else None
    present = int(len(np.unique(source.labels[:n]))) if labelled else None
    note = ("no labels: accuracy was not measured" if not labelled else
            f"labels cover {present} of the model's {card.num_classes} classes: accuracy is over "
            "those images, and the model may still answer with the others"
            if present < card.num_classes else "")
    report_rows = []
    for row in rows:
        entry = {"backend": row.backend, "precision": row.precision}
        if row.runner is None:
            entry.update(status="skipped", reason=row.reason, device=None, metrics=None,
                         accuracy=None, latency=None, gates=[], error_histogram=None,
                         disagreements=None, int8_path=None, settings=None)
        else:
            comparison = row.comparison.summary(
                near_tie=NEAR_TIE_FACTOR * row.comparison.p99_abs if agreement == "decisive" else None)
            accuracy = _accuracy(row.accuracy) if labelled else None
            if accuracy:
                accuracy["drop_pt"] = (ref_acc["top1"] - accuracy["top1"]) * 100
            gates = evaluate_gates(for_precision(thresholds, row.precision), comparison, accuracy,
                                   ref_acc)
            if cuda_graph:
                entry["cuda_graph"], graph_gate = _graph_check(row)
                gates += [graph_gate] if graph_gate else []
            entry.update(status="ran", reason="", device=row.runner.label, settings=row.runner.settings,
                         metrics=comparison,
                         accuracy=accuracy, latency=_pass_latency(sizes, row.seconds),
                         gates=[g.__dict__ | {"status": g.status} for g in gates],
                         error_histogram=row.comparison.error_histogram())
            if accuracy:
                accuracy["per_class"] = row.accuracy.per_class()
            entry["int8_path"] = row.runner.int8_path
            if row.fusion is not None:  # a saturating kernel shows here as disagreement
                fusion = row.fusion.summary()
                entry["int8_path"] = {**entry["int8_path"], "fused_vs_as_written": {
                    k: fusion[k] for k in ("top1_agreement", "max_abs", "p99_abs")}}
            # the first images where top-1 differs from the reference's (None: not collected)
            entry["disagreements"] = row.disagreements if keep_disagreements else None
        report_rows.append(entry)

    failed = [f"{r['backend']} {r['precision']} {g['gate']}" for r in report_rows
              for g in r["gates"] if g["passed"] is False]
    missing = [f"{r['backend']} {r['precision']}" for r in report_rows if r["status"] == "skipped"]
    # a row of a backend named by the caller that cannot run; not one skipped by a default
    # (torch fp16 on a CPU)
    asked = [f"{r['backend']} {r['precision']}" for r in report_rows
             if r["status"] == "skipped" and r["backend"] in named_backends and r["reason"] != CPU_FP16]
    if ref_acc:
        ref_acc["per_class"] = ref_accuracy.per_class()
    report = {
        "schema": SCHEMA,
        "tool": {"name": "resnet-edge", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "workdir": str(workdir),
        # what every number here was measured on: the sha256 of each file that ran
        "calibration": _calibration(workdir, rows),
        "artifacts": artifact_hashes(workdir, [(r.backend, r.precision) for r in rows
                                               if r.runner is not None]),
        "model": card.to_dict(),
        "data": {"spec": data_spec, "images": n, "sha256": digest, "labelled": labelled, "batch_size": batch_size,
                 "skipped_files": [str(p) for p in source.skipped[:SKIPPED_LISTED]],
                 "skipped_count": len(source.skipped),
                 "classes_present": present, "accuracy_note": note},
        "agreement": agreement,
        "units": UNITS,
        "machine": describe_machine(),
        "thresholds": {p: t.__dict__ for p, t in thresholds.items()},
        "reference": {"backend": reference_pair[0], "precision": reference_pair[1], "device": reference.label,
                      "settings": reference.settings,
                      "accuracy": ref_acc, "latency": _pass_latency(sizes, ref_seconds),
                      "outputs": reference_outputs(ref_top1, np.concatenate(ref_kept))},
        "candidates": report_rows,
        "summary": {"passed": not failed, "failed_gates": failed, "skipped": missing,
                    "explicit_backends_missing": asked},
    }
    if keep_disagreements:
        report["_thumbnails"] = thumbnails
    return report


def _graph_check(row: _Row) -> tuple[dict, GateResult | None]:
    """The replayed graph against the same backend's eager run: equal logits, or the gate
    fails; a backend that cannot capture (the CPU) says why and has no gate."""
    if row.graph is None:
        return {"reason": row.graph_reason}, None
    summary = row.graph_comparison.summary()
    worst = summary["max_abs"]
    return ({"device": row.graph.label, "max_abs": worst, "top1_agreement": summary["top1_agreement"]},
            GateResult("graph_max_abs", worst, 0.0, bool(worst <= 0.0),
                       "a replayed CUDA graph against this backend's own eager run"))


def reference_outputs(top1: list[int], logits: np.ndarray) -> dict:
    """What a later run on the same set is held to: the reference's class for every image, and
    its logits for the first SAVED_LOGITS (float32, little-endian, base64), bounded in size
    whatever the set (ImageNet's 1000 classes: 171 KB)."""
    logits = np.ascontiguousarray(logits, dtype="<f4")
    return {"top1": top1, "logits": {"images": int(logits.shape[0]), "classes": int(logits.shape[1]),
                                     "float32_base64": base64.b64encode(logits.tobytes()).decode()}}


def saved_logits(outputs: dict) -> np.ndarray:
    """The logits reference_outputs saved, as an images x classes array."""
    saved = outputs["logits"]
    raw = np.frombuffer(base64.b64decode(saved["float32_base64"], validate=True), dtype="<f4")
    if not np.isfinite(raw).all():  # a real reference never saves these: the pass refuses them
        raise ValueError("saved reference logits hold NaN or inf")
    return raw.reshape(saved["images"], saved["classes"])


def _keep_disagreements(row: _Row, ref: np.ndarray, out: np.ndarray, labels, offset: int,
                        thumbnails: dict[int, bytes], batch: np.ndarray, preprocess) -> None:
    """Note the images where the candidate's top-1 is not the reference's (a NaN row counts),
    up to KEEP_DISAGREEMENTS, and make a thumbnail of each image once."""
    room = KEEP_DISAGREEMENTS - len(row.disagreements)
    if room <= 0:
        return
    good = np.isfinite(out).reshape(len(out), -1).all(axis=1)
    differ = np.flatnonzero((out.argmax(axis=1) != ref.argmax(axis=1)) | ~good)[:room]
    for i in differ:
        index = offset + int(i)
        row.disagreements.append({
            "image": index, "label": None if labels is None else int(labels[i]),
            "reference": int(ref[i].argmax()),
            "candidate": int(out[i].argmax()) if good[i] else None})
        if index not in thumbnails:
            thumbnails[index] = _thumbnail(batch[i], preprocess)


def _thumbnail(chw: np.ndarray, preprocess) -> bytes:
    """The model's input, un-normalized back to an RGB picture, as a PNG."""
    import io

    from PIL import Image
    mean = np.asarray(preprocess.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(preprocess.std, dtype=np.float32)[:, None, None]
    rgb = np.clip((chw * std + mean) * 255.0, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    image = Image.fromarray(rgb)
    scale = THUMBNAIL_PX / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.NEAREST if scale > 1 else Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _calibration(workdir, rows: list[_Row]) -> dict | None:
    """What the int8 rows' model was calibrated on, as calibrate recorded it in the file: the
    data spec, how many images, the method and recipe, the layers left in float."""
    path = Path(workdir) / ORT_FILES["int8"]  # int8-fp16 is the same calibration's
    ran = any(r.runner is not None and r.precision.startswith("int8") for r in rows)
    info = quantization_info(path) if ran and path.exists() else {}
    keys = ("data", "samples", "method", "recipe", "excluded", "calibration_sha256", "repair")
    return {key: info.get(key) for key in keys} if info else None


def _accuracy(acc: Accuracy) -> dict:
    return {"top1": acc.top1, "top5": acc.top5, "images": acc.images}


def _pass_latency(sizes: list[int], seconds: list[float]) -> dict | None:
    """Per-batch host-to-host time measured during the evaluation pass itself (no extra runs),
    over the batches of the largest size that ran, and labelled with that size: a single short
    batch of 16 is reported as 16, not as the --batch-size asked for."""
    if not seconds:
        return None
    size = max(sizes)
    stats = LatencyStats.from_seconds(size, [s for n, s in zip(sizes, seconds) if n == size]).to_dict()
    stats["source"] = "evaluation pass, per batch, host to host"
    return stats


__all__ = ["run_parity", "candidates", "default_precisions", "with_providers", "SCHEMA", "PRECISIONS"]
