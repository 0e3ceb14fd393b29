"""The latency regression gate (`bench --baseline`) on this machine's own noise: its false-alarm
rate when nothing changed, and its detection power for a 5 % and a 15 % slowdown, at bench's
default 100 iterations and the default gate (10 %).

Real samples, not a model of them: ONNX Runtime runs the digits ResNet-20 (tests/data) at batch
8 for --samples iterations; each trial takes two disjoint windows of 100 as a baseline run and a
new run, and the slowdowns multiply the new run's samples (the noise stays this machine's).

    .venv/bin/python benchmarks/latency_gate.py [--samples 3000] [--trials 200]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resnet_edge.export import ExportOptions, export_model  # noqa: E402
from resnet_edge.runtime import regression  # noqa: E402
from resnet_edge.runtime.ort import make_session  # noqa: E402
from resnet_edge.zoo import load_model  # noqa: E402

ITERATIONS = 100  # bench's default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, card = load_model(str(ROOT / "tests/data/resnet20-digits.pt"))
        export_model(model, card, tmp, ExportOptions(exporter="torchscript"), fp16=False)
        session = make_session(Path(tmp) / "model.onnx")
        x = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
        for _ in range(20):
            session.run(None, {"input": x})
        samples = []
        for _ in range(args.samples):
            start = time.perf_counter()
            session.run(None, {"input": x})
            samples.append((time.perf_counter() - start) * 1e3)
    samples = np.asarray(samples)
    print(f"{len(samples)} runs of ort fp32 batch 8: p50 {np.median(samples):.3f} ms, "
          f"spread (p90/p10) {np.percentile(samples, 90) / np.percentile(samples, 10):.2f}")
    rng = np.random.default_rng(0)
    windows = len(samples) // ITERATIONS
    for slowdown in (0.0, 0.05, 0.15):
        verdicts = collections.Counter()
        for _ in range(args.trials):
            a, b = rng.choice(windows, 2, replace=False)
            old = samples[a * ITERATIONS:(a + 1) * ITERATIONS]
            new = samples[b * ITERATIONS:(b + 1) * ITERATIONS] * (1 + slowdown)
            verdicts[regression.judge(old, new)["verdict"]] += 1
        shares = ", ".join(f"{v} {verdicts[v] / args.trials:.1%}"
                           for v in ("regression", "inconclusive", "pass"))
        what = "nothing changed (false alarms = regression)" if slowdown == 0 else f"{slowdown:.0%} slower"
        print(f"{what}: {shares}")


if __name__ == "__main__":
    main()
