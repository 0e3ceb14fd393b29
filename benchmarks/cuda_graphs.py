"""How much a replayed CUDA graph saves over eager launches, side by side in one run, on a GPU.

Exports a random-init ResNet (resnet50 by default) into a scratch work dir, then runs
`bench --cuda-graph` on it (torch and ONNX Runtime's CUDA provider, fp16 and fp32, batch 1, 8
and 32; TensorRT too where engines are built) and prints, per backend and batch, p50 device
time eager and replayed and their ratio. Eager PyTorch at small batches is launch-bound, so the
ratio is largest there; at batch 32 the kernels dominate and it falls towards 1.

    python benchmarks/cuda_graphs.py [--model resnet50] [--iterations 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from resnet_edge.bench import run_bench
from resnet_edge.export import export_model
from resnet_edge.zoo import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--workdir", type=Path, help="an exported work dir to reuse [a fresh export]")
    parser.add_argument("--json", type=Path, help="write the bench report here too")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU: CUDA graphs are a GPU's")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir
        if workdir is None:
            model, card = load_model(args.model, weights="none")
            workdir = Path(scratch) / args.model
            export_model(model, card, workdir)
        pairs = [(b, p) for b in ("torch", "ort", "trt") for p in ("fp16", "fp32")]
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        report = run_bench(workdir, pairs, sizes, iterations=args.iterations, warmup=20,
                           device="cuda", cuda_graph=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"{args.model} on {report['machine']['gpu']}: p50 device time, ms "
          f"({args.iterations} iterations)")
    print(f"{'backend':<22}{'batch':>6}{'eager':>10}{'graph':>10}{'x faster':>15}")
    for row in report["graph_speedup"]:
        d = row["device_compute"]
        print(f"{row['backend'] + ' ' + row['precision']:<22}{row['batch_size']:>6}"
              f"{d['eager_p50_ms']:>10.3f}{d['graph_p50_ms']:>10.3f}{d['ratio']:>15.2f}")
    for skipped in report["skipped"]:
        print(f"skipped {skipped['backend']} {skipped['precision']}: {skipped['reason']}")


if __name__ == "__main__":
    main()
