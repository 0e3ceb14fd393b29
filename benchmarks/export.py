"""`resnet-edge export` against the bare sequence it stands for, side by side.

Peer: torch.onnx.export to a file, onnx.checker with full_check, one ONNX Runtime session and
run at batch 5 compared with one PyTorch pass at batch 5. Ours: the whole `export` (the same
checks, plus batch 1 from the same PyTorch pass, the model card, model.pt, model.fp16.onnx and
the manifest). Runs alternate peer/ours in this one process so machine noise hits both alike;
the ratio is the median of the pairs. Target: ratio <= 1.2.

    .venv/bin/python benchmarks/export.py [--pairs 3] [--models resnet18,resnet50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from resnet_edge import zoo
from resnet_edge.export import ExportOptions, export_model


def peer(model, input_shape, options: ExportOptions, path: Path) -> None:
    example = torch.randn(2, *input_shape)
    batch = torch.export.Dim("batch", min=1, max=options.max_batch)
    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=options.opset,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    onnx.checker.check_model(str(path), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x).numpy()
    out = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--models", default="resnet18,resnet50")
    args = parser.parse_args()
    options = ExportOptions().resolved()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dynamo opset "
          f"{options.opset}; median of {args.pairs} interleaved pairs")
    print(f"{'model':10} {'peer s':>8} {'ours s':>8} {'ratio':>6}  target <= 1.20")
    worst = 0.0
    for name in args.models.split(","):
        model, card = zoo.load_model(name, weights="none")
        shape = card.preprocess.input_shape
        bare, ours, ratios = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            peer(model, shape, options, Path(tmp) / "warm.onnx")  # first-export costs, once
            for i in range(args.pairs):
                start = time.perf_counter()
                peer(model, shape, options, Path(tmp) / f"peer{i}.onnx")
                bare.append(time.perf_counter() - start)
                start = time.perf_counter()
                export_model(model, card, Path(tmp) / f"ours{i}", options)
                ours.append(time.perf_counter() - start)
                ratios.append(ours[-1] / bare[-1])
        ratio = statistics.median(ratios)
        worst = max(worst, ratio)
        print(f"{name:10} {statistics.median(bare):8.2f} {statistics.median(ours):8.2f} {ratio:6.2f}")
    print("PASS" if worst <= 1.2 else "FAIL", f"(worst ratio {worst:.2f})")


if __name__ == "__main__":
    main()
