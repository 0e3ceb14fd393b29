"""The `cpu` int8 recipe's weight width, measured side by side: 7 bits (the default) against
onnxruntime.quantization's 8, on the digits ResNet-20 the tests build on.

For each width: top-1 on digits:test with ONNX Runtime's fused integer kernels on this CPU and
with Q/DQ as written (exact arithmetic), the share of conv accumulators that x86 without VNNI
(VPMADDUBSW, int16 pair sums) would get wrong, emulated on 16 images (tests/u8s8_emulation.py),
and ORT CPU latency at batch 32, runs interleaved so machine noise hits both alike.

    .venv/bin/python benchmarks/cpu_int8.py [--checkpoint tests/data/resnet20-digits.pt] [--runs 30]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "tests" / "data" / "resnet20-digits.pt"))
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    from onnxruntime import quantization as q
    from u8s8_emulation import saturated_outputs, u8_activations

    from resnet_edge.calibration import calibrate
    from resnet_edge.data import batches, open_data
    from resnet_edge.export import export_model, read_card
    from resnet_edge.runtime.cpu import cpu_features
    from resnet_edge.runtime.ort import make_session
    from resnet_edge.zoo import load_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        model, card = load_model(args.checkpoint)
        export_model(model, card, work, fp16=False)
        calibrate(work, "digits:train", samples=512, method="minmax", recipe="cpu")
        seven = work / "model.int8.onnx"
        eight = Path(tmp) / "eight.onnx"
        shutil.copyfile(work / "model.onnx", Path(tmp) / "fp32.onnx")
        q.quantize_static(str(Path(tmp) / "fp32.onnx"), str(eight), calibration_data_reader=None,
                          calibration_cache_path=str(work / "calibration.ranges.json"),
                          quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
        preprocess = read_card(work / "model.onnx").preprocess
        xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in batches(open_data("digits:test"), preprocess, 128)))
        x, y = np.concatenate(xs), np.concatenate(ys)
        fp32 = make_session(work / "model.onnx")
        fp32_top1 = (fp32.run(None, {"input": x})[0].argmax(1) == y).mean()
        print(f"CPU: {cpu_features()}")
        print(f"fp32 top-1 {fp32_top1:.2%} on {len(y)} digits:test images")
        rows = {}
        for label, path in (("7-bit (default)", seven), ("8-bit", eight)):
            fused, exact = make_session(path), make_session(path, disable_qdq_fusion=True)
            top1 = {k: (s.run(None, {"input": x})[0].argmax(1) == y).mean() for k, s in
                    (("fused", fused), ("as written", exact))}
            wrong = saturated_outputs(onnx.load(str(path)), u8_activations(onnx.load(str(path)), x[:16]))
            rows[label] = fused
            print(f"{label}: top-1 fused {top1['fused']:.2%} ({(top1['fused'] - fp32_top1) * 100:+.2f} pt), "
                  f"Q/DQ as written {top1['as written']:.2%}; AVX2 (no VNNI) would get "
                  f"{max(wrong.values()):.2%} of the worst conv's accumulators wrong "
                  f"({sum(v > 0 for v in wrong.values())} of {len(wrong)} convs affected)")
        batch = x[:32]
        times = {label: [] for label in rows}
        for _ in range(args.runs):  # interleaved: noise hits both alike
            for label, session in rows.items():
                start = time.perf_counter()
                session.run(None, {"input": batch})
                times[label].append(time.perf_counter() - start)
        p50 = {label: statistics.median(t) * 1000 for label, t in times.items()}
        print("ORT CPU p50 at batch 32: " + ", ".join(f"{k} {v:.1f} ms" for k, v in p50.items())
              + f"; ratio 7-bit / 8-bit {p50['7-bit (default)'] / p50['8-bit']:.3f}")


if __name__ == "__main__":
    main()
