"""How much our latency harness and parity runner add over bare loops, in one process.

1. p50 latency from `resnet_edge.runtime.latency.measure` (what `bench` runs) vs a bare
   `time.perf_counter()` loop around `session.run` / `model(x)`, resnet18, batch 1 and 8, ORT
   CPU and torch CPU; and, where Polygraphy is installed, its OnnxrtRunner on the same model.
   Target: ratio to the bare loop <= 1.05.
2. `run_parity` over digits:test with the default CPU backends vs the sum of the bare backends'
   time on the same preprocessed batches. Target: ratio <= 1.05.

Rounds alternate bare and ours so machine noise hits both alike; ratios are medians of rounds.

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

from resnet_edge.data import open_data
from resnet_edge.export import export_model
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import run_parity
from resnet_edge.backends import OrtBackend, TorchBackend
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
    ours = {"ort": OrtBackend(tmp / "r18" / "model.onnx", provider="cpu"),
            "torch": TorchBackend(model)}
    # The bare loop uses the very same session: a second session's idle, spinning thread pool
    # would slow whichever runs next on 2 cores and measure that instead of our harness.
    session = ours["ort"].session

    def torch_bare(x):
        with torch.inference_mode():
            return model(x)
    bare = {"ort": lambda x: session.run(None, {"input": x}), "torch": torch_bare}
    polygraphy = _polygraphy(tmp / "r18" / "model.onnx")
    print(f"1. latency harness vs bare loop (resnet18, p50 ms, median of {args.rounds} rounds "
          f"of {args.iterations} iterations)")
    print(f"   {'backend':8} {'batch':>5} {'bare':>9} {'ours':>9} {'ratio':>6}")
    worst = 0.0
    for name in ("ort", "torch"):
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
            bare_x = torch.from_numpy(x) if name == "torch" else x
            b, o, p = [], [], []
            for _ in range(args.rounds):
                b.append(bare_p50(bare[name], bare_x, args.iterations, 3))
                o.append(measure(ours[name], x, iterations=args.iterations, warmup=3)["host_to_host"]["p50_ms"])
                if name == "ort" and polygraphy:
                    p.append(bare_p50(polygraphy, x, args.iterations, 3))
            ratio = statistics.median([oi / bi for oi, bi in zip(o, b)])
            worst = max(worst, ratio)
            versus = (f"   polygraphy {statistics.median(p):9.3f} (ours / polygraphy "
                      f"{statistics.median(o) / statistics.median(p):.3f})") if p else ""
            print(f"   {name:8} {batch:5d} {statistics.median(b):9.3f} {statistics.median(o):9.3f} "
                  f"{ratio:6.3f}{versus}")
    return worst


def _polygraphy(path: Path):
    """Polygraphy's OnnxrtRunner.infer on `path`, where Polygraphy is installed (a peer to
    compare with, not a dependency of this project)."""
    try:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    except ImportError:
        print("   (Polygraphy is not installed: pip install polygraphy to compare with it)")
        return None
    runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]))
    runner.activate()
    return lambda x: runner.infer({"input": x})


def parity_overhead(tmp: Path, rounds: int) -> float:
    """run_parity against the same work done with the bare libraries: preprocess digits:test
    with torchvision's transform, open the ONNX Runtime sessions, run PyTorch fp32 and ORT
    fp32/fp16 over every batch and compare the logits (what run_parity runs by default on a CPU;
    torch fp16 only when named, as CPUs have no fast fp16 kernels)."""
    import onnxruntime
    model, card = load_model("resnet20", weights="none")
    export_model(model, card, tmp / "r20")
    source = open_data("digits:test")

    def bare() -> None:
        transform = card.preprocess.transform()
        xs = torch.stack([transform(source.image(i)) for i in range(len(source))]).numpy()
        sessions = [onnxruntime.InferenceSession(str(tmp / "r20" / name), providers=["CPUExecutionProvider"])
                    for name in ("model.onnx", "model.fp16.onnx")]
        for start in range(0, len(xs), 32):
            x = xs[start:start + 32]
            with torch.inference_mode():
                ref = model(torch.from_numpy(x)).numpy()
            for session in sessions:
                out = session.run(None, {"input": x})[0]
                np.abs(out - ref).max(), (out.argmax(1) == ref.argmax(1)).mean()

    def ours() -> None:
        run_parity(tmp / "r20", "digits:test", backends=["torch", "ort"], precisions=["fp32", "fp16"],
                   thresholds=load_thresholds(), device="cpu")
    ratios, times = [], []
    bare()  # first-call costs (kernels, imports) on neither side's clock
    for _ in range(rounds):
        start = time.perf_counter()
        bare()
        b = time.perf_counter() - start
        start = time.perf_counter()
        ours()
        o = time.perf_counter() - start
        ratios.append(o / b)
        times.append((b, o))
    ratio = statistics.median(ratios)
    b, o = (statistics.median(t[i] for t in times) for i in (0, 1))
    print(f"2. parity over digits:test (397 images, batch 32, torch fp32 + ORT fp32/fp16) vs the "
          f"bare libraries, median of {rounds} rounds")
    print(f"   bare {b:6.2f} s   run_parity {o:6.2f} s   ratio {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        worst = harness(args, Path(tmp))
        ratio = parity_overhead(Path(tmp), args.rounds)
    print(f"{'PASS' if worst <= 1.05 else 'FAIL'} harness worst ratio {worst:.3f} (target <= 1.05); "
          f"{'PASS' if ratio <= 1.05 else 'FAIL'} parity ratio {ratio:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
