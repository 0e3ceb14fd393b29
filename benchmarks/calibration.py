"""Calibration cost and what INT8 buys on ONNX Runtime CPU, measured side by side.

1. Calibration time (ranges over every tensor + Q/DQ model) for resnet18 at 64/256/512 samples.
2. ORT CPU p50 latency of fp32 vs int8 (tensorrt and cpu recipes) at batch 1 and 8, as ratios.
3. Accuracy on digits:test of a resnet20 trained with `resnet-edge train` defaults: PyTorch
   fp32 vs ORT CPU int8 for both recipes (512 samples). Target: each loses <= 0.5 pt.

    .venv/bin/python benchmarks/calibration.py [--checkpoint runs/resnet20-digits/model.pt]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from resnet_edge.calibration import calibrate
from resnet_edge.export import export_model
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import run_parity
from resnet_edge.runtime.backends import open_backend
from resnet_edge.runtime.latency import measure
from resnet_edge.train import TrainConfig, train
from resnet_edge.zoo import load_model


def calibration_times(tmp: Path) -> dict[str, Path]:
    model, card = load_model("resnet18", weights="none", num_classes=10)
    base = tmp / "r18"
    export_model(model, card, base, fp16=False)
    print("1. calibration time, resnet18 (224 px), digits:train, minmax, tensorrt recipe")
    for samples in (64, 256, 512):
        work = tmp / f"r18-{samples}"
        shutil.copytree(base, work)
        start = time.perf_counter()
        calibrate(work, "digits:train", samples=samples, method="minmax", holdout=1)
        print(f"   {samples:4d} samples  {time.perf_counter() - start:7.1f} s")
    works = {}
    for recipe in ("tensorrt", "cpu"):
        works[recipe] = tmp / f"r18-{recipe}"
        shutil.copytree(base, works[recipe])
        calibrate(works[recipe], "digits:train", samples=64, method="minmax", recipe=recipe, holdout=1)
    return works


def latency_ratios(works: dict[str, Path], iterations: int) -> None:
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        works = calibration_times(Path(tmp))
        latency_ratios(works, args.iterations)
        accuracy(args.checkpoint, Path(tmp))


if __name__ == "__main__":
    main()
