"""How much our latency harness and parity runner add over bare loops, in one process.

1. p50 latency from `resnet_edge.runtime.latency.measure` vs a bare `time.perf_counter()` loop
   around `session.run` / `model(x)`, resnet18, batch 1 and 8, ORT CPU and torch CPU.
   Target: ratio <= 1.03.
2. `run_parity` over digits:test with every CPU backend vs the sum of the bare backends' time
   on the same preprocessed batches. Target: ratio <= 1.2.

Rounds alternate bare and ours so machine noise hits both alike.

    .venv/bin/python benchmarks/harness_overhead.py [--iterations 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resnet_edge.data import batches, open_data
from resnet_edge.export import export_model
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import run_parity
from resnet_edge.runtime.backends import OrtBackend, TorchBackend
from resnet_edge.runtime.latency import measure
from resnet_edge.zoo import load_model


def bare_p50(fn, x, iterations: int, warmup: int) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50)) * 1e3


def harness(args, tmp: Path) -> float:
    model, card = load_model("resnet18", weights="none")
    export_model(model, card, tmp / "r18", fp16=False)
    ours = {"ort": OrtBackend(tmp / "r18" / "model.onnx", providers=("CPUExecutionProvider",)),
            "torch": TorchBackend(model)}
    # The bare loop uses the very same session: a second session's idle, spinning thread pool
    # would slow whichever runs next on 2 cores and measure that instead of our harness.
    session = ours["ort"].session

    def torch_bare(x):
        with torch.inference_mode():
            return model(x)
    bare = {"ort": lambda x: session.run(None, {"input": x}), "torch": torch_bare}
    print(f"1. latency harness vs bare loop (resnet18, p50 ms, median of {args.rounds} rounds "
          f"of {args.iterations} iterations)")
    print(f"   {'backend':8} {'batch':>5} {'bare':>9} {'ours':>9} {'ratio':>6}")
    worst = 0.0
    for name in ("ort", "torch"):
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
            bare_x = torch.from_numpy(x) if name == "torch" else x
            b, o = [], []
            for _ in range(args.rounds):
                b.append(bare_p50(bare[name], bare_x, args.iterations, 3))
                o.append(measure(ours[name], x, iterations=args.iterations, warmup=3)["host_to_host"]["p50_ms"])
            ratio = statistics.median(o) / statistics.median(b)
            worst = max(worst, ratio)
            print(f"   {name:8} {batch:5d} {statistics.median(b):9.3f} {statistics.median(o):9.3f} {ratio:6.3f}")
    return worst


def parity_overhead(tmp: Path) -> float:
    model, card = load_model("resnet20", weights="none")
    export_model(model, card, tmp / "r20")
    x_batches = [x.numpy() for x, _ in batches(open_data("digits:test"), card.preprocess, 32)]
    runners = [TorchBackend(model), TorchBackend(model, "fp16"),
               OrtBackend(tmp / "r20" / "model.onnx", providers=("CPUExecutionProvider",)),
               OrtBackend(tmp / "r20" / "model.fp16.onnx", "fp16", providers=("CPUExecutionProvider",))]
    bare = {}
    for r in runners:
        r.run(x_batches[0])  # same warm-up parity gets from its first batch
        start = time.perf_counter()
        for x in x_batches:
            r.run(x)
        bare[r.label] = time.perf_counter() - start
    start = time.perf_counter()
    run_parity(tmp / "r20", "digits:test", backends=["torch", "ort"], precisions=["fp32", "fp16"],
               thresholds=load_thresholds(), device="cpu")
    ours = time.perf_counter() - start
    ratio = ours / sum(bare.values())
    print("2. parity over digits:test (397 images, batch 32) vs bare backends on the same batches")
    for label, seconds in bare.items():
        print(f"   bare {label:18} {seconds:7.2f} s")
    print(f"   sum of bare          {sum(bare.values()):7.2f} s")
    print(f"   run_parity           {ours:7.2f} s   ratio {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        worst = harness(args, Path(tmp))
        ratio = parity_overhead(Path(tmp))
    print(f"{'PASS' if worst <= 1.03 else 'FAIL'} harness worst ratio {worst:.3f} (target <= 1.03); "
          f"{'PASS' if ratio <= 1.2 else 'FAIL'} parity ratio {ratio:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
