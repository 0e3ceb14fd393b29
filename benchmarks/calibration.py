"""Calibration against its peer, and what INT8 buys on ONNX Runtime CPU, measured side by side.

1. `calibrate` vs bare `onnxruntime.quantization.quantize_static` with the same recipe (tensorrt:
   symmetric int8, per-channel weights, Q/DQ on Conv/Gemm, entropy) on the same preprocessed
   images. Each run is its own process (same imports on both sides), so peak memory is
   comparable; runs alternate ours/peer and the ratio is the median of the pairs.
   Targets: time ratio <= 1.15, peak memory ratio <= 1.10.
2. ORT CPU p50 latency of fp32 vs int8 (tensorrt and cpu recipes) at batch 1 and 8, as ratios.
3. Accuracy on digits:test of a resnet20 trained with `resnet-edge train` defaults: PyTorch fp32
   vs ORT CPU int8 for both recipes (512 samples). Target: each loses <= 0.5 pt.

    .venv/bin/python benchmarks/calibration.py [--pairs 3] [--parts 1,2,3] [--checkpoint runs/resnet20-digits/model.pt]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = [("resnet20", 256), ("resnet18", 64), ("resnet50", 64)]  # (model, images), entropy


def child(args) -> None:
    """One timed run in this process: ours (`calibrate`) or the peer (`quantize_static`)."""
    import resnet_edge.calibration as ours  # both sides import the same modules first
    from onnxruntime import quantization as q
    from resnet_edge.calibration.qdq import ArrayReader
    work = Path(args.work)
    start = time.perf_counter()
    if args.child == "ours":
        ours.calibrate(work, f"npy:{work.parent / 'inputs.npy'}", samples=args.samples,
                       method="entropy")
    else:
        inputs = np.load(work.parent / "inputs.npy")
        q.quantize_static(
            str(work / "model.onnx"), str(work / "peer.int8.onnx"), ArrayReader(inputs),
            quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.Entropy,
            op_types_to_quantize=["Conv", "Gemm"],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "QuantizeBias": False, "AddQDQPairToWeight": True,
                           "DedicatedQDQPair": True, "CalibTensorRangeSymmetric": True,
                           "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm"],
                           "QDQOpTypePerChannelSupportToAxis": {"Gemm": 0}})
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def run_child(kind: str, work: Path, samples: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work),
                          "--samples", str(samples)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def versus_peer(tmp: Path, pairs: int) -> None:
    from resnet_edge.calibration.dataset import calibration_inputs
    from resnet_edge.data import open_data
    from resnet_edge.export import export_model
    from resnet_edge.zoo import load_model
    print(f"1. calibrate vs quantize_static (tensorrt recipe, entropy), median of {pairs} pairs, "
          "one process per run")
    print(f"   {'model':9} {'images':>6} {'peer s':>7} {'ours s':>7} {'ratio':>6}  "
          f"{'peer MiB':>8} {'ours MiB':>8} {'ratio':>6}")
    worst_time = worst_memory = 0.0
    for name, images in CASES:
        case = tmp / name
        model, card = load_model(name, weights="none", num_classes=10)
        export_model(model, card, case / "base", fp16=False)
        inputs, _ = calibration_inputs(open_data("digits:train"), card.preprocess, images)
        np.save(case / "inputs.npy", inputs)
        times, memory, rows = [], [], []
        for _ in range(pairs):
            for kind in ("peer", "ours"):
                work = case / kind
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(case / "base", work)
            peer, ours = run_child("peer", case / "peer", images), run_child("ours", case / "ours", images)
            rows.append((peer, ours))
            times.append(ours["seconds"] / peer["seconds"])
            memory.append(ours["peak_mib"] / peer["peak_mib"])
        t, m = statistics.median(times), statistics.median(memory)
        worst_time, worst_memory = max(worst_time, t), max(worst_memory, m)
        med = lambda key, side: statistics.median(r[side][key] for r in rows)  # noqa: E731
        print(f"   {name:9} {images:6d} {med('seconds', 0):7.2f} {med('seconds', 1):7.2f} {t:6.2f}  "
              f"{med('peak_mib', 0):8.0f} {med('peak_mib', 1):8.0f} {m:6.2f}")
    print(f"   {'PASS' if worst_time <= 1.15 else 'FAIL'} time (worst {worst_time:.2f}, target <= 1.15); "
          f"{'PASS' if worst_memory <= 1.10 else 'FAIL'} memory (worst {worst_memory:.2f}, target <= 1.10)")


def latency_ratios(tmp: Path, iterations: int) -> None:
    from resnet_edge.calibration import calibrate
    from resnet_edge.export import export_model
    from resnet_edge.backends import open_backend
    from resnet_edge.runtime.latency import measure
    from resnet_edge.zoo import load_model
    model, card = load_model("resnet18", weights="none", num_classes=10)
    works = {}
    for recipe in ("tensorrt", "cpu"):
        works[recipe] = tmp / f"r18-{recipe}"
        export_model(model, card, works[recipe], fp16=False)
        calibrate(works[recipe], "digits:train", samples=64, method="minmax", recipe=recipe)
    print(f"2. ORT CPU latency, resnet18, p50 of {iterations} iterations (ratio = fp32 / int8)")
    print(f"   {'batch':>5} {'fp32 ms':>9} {'int8 trt-recipe':>16} {'int8 cpu-recipe':>16}")
    fp32 = open_backend("ort", "fp32", works["cpu"], device="cpu")
    int8 = {r: open_backend("ort", "int8", w, device="cpu") for r, w in works.items()}
    for batch in (1, 8):
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        base = measure(fp32, x, iterations=iterations, warmup=3)["host_to_host"]["p50_ms"]
        cells = []
        for recipe in ("tensorrt", "cpu"):
            ms = measure(int8[recipe], x, iterations=iterations, warmup=3)["host_to_host"]["p50_ms"]
            cells.append(f"{ms:8.2f} ({base / ms:4.2f}x)")
        print(f"   {batch:5d} {base:9.2f} {cells[0]:>16} {cells[1]:>16}")


def accuracy(checkpoint: Path | None, tmp: Path) -> None:
    from resnet_edge.calibration import calibrate
    from resnet_edge.export import export_model
    from resnet_edge.parity.gates import load_thresholds
    from resnet_edge.parity.run import run_parity
    from resnet_edge.train import TrainConfig, train
    from resnet_edge.zoo import load_model
    if checkpoint is None:
        print("3. training resnet20 on digits with the train defaults ...")
        checkpoint = train(TrainConfig("resnet20", "digits", tmp / "run")).model_path
    model, card = load_model(str(checkpoint))
    print(f"3. int8 accuracy on digits:test, {checkpoint} (512 calibration samples from digits:train)")
    for recipe in ("tensorrt", "cpu"):
        for method in ("minmax", "entropy", "percentile"):
            work = tmp / f"acc-{recipe}-{method}"
            export_model(model, card, work, fp16=False)
            calibrate(work, "digits:train", samples=512, method=method, recipe=recipe)
            report = run_parity(work, "digits:test", backends=["ort"], precisions=["int8"],
                                thresholds=load_thresholds(), device="cpu")
            row = report["candidates"][0]
            ref = report["reference"]["accuracy"]["top1"]
            status = "PASS" if row["accuracy"]["drop_pt"] <= 0.5 else "FAIL"
            print(f"   {recipe:8} {method:10} fp32 {ref:.2%}  int8 {row['accuracy']['top1']:.2%}  "
                  f"drop {row['accuracy']['drop_pt']:+.2f} pt  [{row['device']}]  {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="A digits-trained resnet20 model.pt")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if "1" in parts:
            versus_peer(Path(tmp), args.pairs)
        if "2" in parts:
            latency_ratios(Path(tmp), args.iterations)
        if "3" in parts:
            accuracy(args.checkpoint, Path(tmp))


if __name__ == "__main__":
    main()
