"""Bare torch.onnx.export (the call export_onnx makes, nothing else) vs `resnet-edge export` (export + metadata + checker + ORT parity).

Both run in this one process, interleaved, so machine noise hits both alike. Target: our checks
add at most 50% to the bare export time (ratio <= 1.5).

    .venv/bin/python benchmarks/export.py [--repeats 3] [--models resnet18,resnet50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from resnet_edge import zoo
from resnet_edge.export import ExportOptions, export_model
from resnet_edge.export.torch_to_onnx import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="resnet18,resnet50")
    args = parser.parse_args()
    options = ExportOptions().resolved()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, exporter dynamo "
          f"opset {options.opset}, median of {args.repeats}")
    print(f"{'model':10} {'bare s':>8} {'ours s':>8} {'ratio':>6}  target <= 1.50")
    worst = 0.0
    for name in args.models.split(","):
        model, card = zoo.load_model(name, weights="none")
        bare, ours = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                start = time.perf_counter()
                export_onnx(model, card.preprocess.input_shape, Path(tmp) / "bare.onnx", options)
                bare.append(time.perf_counter() - start)
                start = time.perf_counter()
                export_model(model, card, Path(tmp) / "ours", options, force=True)
                ours.append(time.perf_counter() - start)
        ratio = statistics.median(ours) / statistics.median(bare)
        worst = max(worst, ratio)
        print(f"{name:10} {statistics.median(bare):8.2f} {statistics.median(ours):8.2f} {ratio:6.2f}")
    print("PASS" if worst <= 1.5 else "FAIL", f"(worst ratio {worst:.2f})")


if __name__ == "__main__":
    main()
