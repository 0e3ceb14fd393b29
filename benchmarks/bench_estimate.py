"""How well `bench` foretells its own length: the estimate it says before it starts (from
PROBE_RUNS probe runs per row) against the time it then took, per configuration, as a ratio
measured in one run. Target: measured / estimated within 1 +- bench.ESTIMATE_SLACK on an idle
machine (the bench says so itself when it is not). The test suite holds no wall-clock figure.

    .venv/bin/python benchmarks/bench_estimate.py [--checkpoint tests/data/resnet20-digits.pt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from resnet_edge import bench
from resnet_edge.export import export_model
from resnet_edge.zoo import load_model

CONFIGS = [  # (pairs, batch sizes, iterations)
    ([("ort", "fp32")], [1, 8], 100),
    ([("ort", "fp32"), ("ort", "fp16"), ("torch", "fp32")], [1, 32], 50),
    ([("torch", "fp32")], [8], 300),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(Path(__file__).parents[1] / "tests/data/resnet20-digits.pt"))
    args = parser.parse_args()
    bench.LONG_BENCH_S = 0.0  # every estimate said, however short
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        export_model(*load_model(args.checkpoint), work)
        print(f"{'rows':<40} {'estimated s':>12} {'measured s':>11} {'measured / estimated':>21}")
        for pairs, sizes, iterations in CONFIGS:
            result = bench.run_bench(work, pairs, sizes, iterations=iterations, warmup=10, device="cpu")
            estimated, measured = result["estimated_seconds"], result["measured_seconds"]
            label = f"{'+'.join(f'{b} {p}' for b, p in pairs)} x {sizes} x {iterations}"
            verdict = "ok" if abs(measured / estimated - 1) <= bench.ESTIMATE_SLACK else "off"
            print(f"{label:<40} {estimated:>12.2f} {measured:>11.2f} {measured / estimated:>17.2f} {verdict}")


if __name__ == "__main__":
    main()
