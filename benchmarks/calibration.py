"""Calibration against its peers, and what INT8 buys on ONNX Runtime CPU, measured side by side.

1. `calibrate` vs bare `onnxruntime.quantization.quantize_static` with the same recipe (tensorrt:
   symmetric int8, per-channel weights, Q/DQ on Conv/Gemm, entropy) on the same preprocessed
   images, and NVIDIA ModelOpt's ONNX PTQ (int8, entropy, CPU) where `modelopt` is installed
   (an optional peer, never a dependency). Each run is its own process (same imports on each
   side), so peak memory (its own ru_maxrss) is comparable; a run whose resident memory passes
   --memory-cap GiB is stopped and said to need more. Runs alternate and each ratio is the
   median of the pairs. ResNet-50 at 64, 256 and 512 images is the user's scale: calibrate
   holds one batch at a time, quantize_static every image's activations (about 115 MB each).
   Targets: time ratio <= 1.15 where the peer finishes; ours within 3 GiB at 512 images.
2. ORT CPU p50 latency of fp32 vs int8 (tensorrt and cpu recipes) at batch 1 and 8, as ratios.
3. Accuracy on digits:test of a resnet20 trained with `resnet-edge train` defaults: PyTorch fp32
   vs ORT CPU int8 for both recipes (512 samples). Target: each loses <= 0.5 pt.

    .venv/bin/python benchmarks/calibration.py [--pairs 3] [--parts 1,2,3] [--cases resnet50:64,resnet50:512]
        [--memory-cap 16] [--modelopt-site DIR] [--checkpoint runs/resnet20-digits/model.pt]
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

CASES = "resnet20:256,resnet18:64,resnet50:64,resnet50:256,resnet50:512"  # model:images, entropy
PEERS = ("peer", "modelopt")


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
    elif args.child == "modelopt":
        from modelopt.onnx.quantization import quantize
        quantize(str(work / "model.onnx"), quantize_mode="int8", calibration_method="entropy",
                 calibration_data=np.load(work.parent / "inputs.npy"), calibration_eps=["cpu"],
                 output_path=str(work / "modelopt.int8.onnx"))
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


def _resident_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


MODELOPT_SITE: str | None = None  # --modelopt-site: where ModelOpt and its own pins are installed


def run_child(kind: str, work: Path, samples: int, cap_gib: float) -> dict:
    """One run in its own process; stopped (and said to need more) once its resident memory
    passes `cap_gib`, so a peer that would swap the machine to a halt is a number, not a hang."""
    import os
    env = dict(os.environ)
    if kind == "modelopt" and MODELOPT_SITE:  # its onnx and onnxruntime pins, for its run only
        env["PYTHONPATH"] = MODELOPT_SITE
    # output to files, not pipes: a child that logs more than a pipe holds would wait forever
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, __file__, "--child", kind, "--work", str(work),
                                  "--samples", str(samples)], stdout=out, stderr=err, text=True, env=env)
        started = time.perf_counter()
        while child.poll() is None:
            if _resident_kib(child.pid) > cap_gib * 1024 * 1024:
                child.kill()
                child.wait()
                return {"stopped": True, "seconds": time.perf_counter() - started, "peak_mib": cap_gib * 1024}
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        said, errors = out.read(), err.read()
    if child.returncode:
        raise RuntimeError(f"{kind} failed: {errors.strip().splitlines()[-1] if errors.strip() else child.returncode}")
    return json.loads(said.strip().splitlines()[-1])


def _cell(run: dict | None, key: str) -> str:
    if run is None:
        return "-"
    if run.get("stopped"):
        return f">{run['peak_mib']:.0f}" if key == "peak_mib" else "stopped"
    return f"{run[key]:.0f}" if key == "peak_mib" else f"{run[key]:.1f}"


def versus_peer(tmp: Path, pairs: int, cases: str, cap_gib: float) -> None:
    import importlib.util
    from resnet_edge.calibration.dataset import calibration_inputs
    from resnet_edge.data import open_data
    from resnet_edge.export import export_model
    from resnet_edge.zoo import load_model
    peers = ["peer", *(["modelopt"] if MODELOPT_SITE or importlib.util.find_spec("modelopt") else [])]
    print(f"1. calibrate vs quantize_static{' and ModelOpt' if 'modelopt' in peers else ''} (tensorrt "
          f"recipe, entropy), median of {pairs} pairs, one process per run, each stopped past "
          f"{cap_gib:g} GiB{'' if 'modelopt' in peers else '; ModelOpt (nvidia-modelopt) is not installed'}")
    print(f"   {'model':9} {'images':>6} {'peer s':>7} {'ours s':>7} {'ratio':>6}  "
          f"{'peer MiB':>8} {'ours MiB':>8} {'ratio':>6}" + ("  modelopt s  MiB" if "modelopt" in peers else ""))
    worst_time, ours_512 = 0.0, None
    for case_name in cases.split(","):
        name, images = case_name.split(":")[0], int(case_name.split(":")[1])
        case = tmp / f"{name}-{images}"
        model, card = load_model(name, weights="none", num_classes=10)
        export_model(model, card, case / "base", fp16=False)
        inputs, _ = calibration_inputs(open_data(f"random:{images}", input_shape=(3, card.preprocess.input_size,
                                                                                    card.preprocess.input_size))
                                       if name != "resnet20" else open_data("digits:train"),
                                       card.preprocess, images)
        np.save(case / "inputs.npy", inputs)
        runs = {kind: [] for kind in ("ours", *peers)}
        for _ in range(pairs):
            for kind in runs:
                work = case / kind
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(case / "base", work)
                runs[kind].append(run_child(kind, work, images, cap_gib))
        med = lambda kind, key: statistics.median(r[key] for r in runs[kind])  # noqa: E731
        finished = not any(r.get("stopped") for r in runs["peer"])
        ratio = (statistics.median(o["seconds"] / p["seconds"] for o, p in zip(runs["ours"], runs["peer"]))
                 if finished else None)
        if ratio is not None:
            worst_time = max(worst_time, ratio)
        memory = med("ours", "peak_mib") / med("peer", "peak_mib") if finished else None
        peer = runs["peer"][0] if not finished else {"seconds": med("peer", "seconds"), "peak_mib": med("peer", "peak_mib")}
        if name == "resnet50" and images == 512:
            ours_512 = med("ours", "peak_mib")
        extra = ""
        if "modelopt" in peers:
            m = runs["modelopt"][0] if any(r.get("stopped") for r in runs["modelopt"]) else {
                "seconds": med("modelopt", "seconds"), "peak_mib": med("modelopt", "peak_mib")}
            extra = f"  {_cell(m, 'seconds'):>10} {_cell(m, 'peak_mib'):>4}"
        print(f"   {name:9} {images:6d} {_cell(peer, 'seconds'):>7} {med('ours', 'seconds'):7.1f} "
              f"{(f'{ratio:.2f}' if ratio else '-'):>6}  {_cell(peer, 'peak_mib'):>8} "
              f"{med('ours', 'peak_mib'):8.0f} {(f'{memory:.2f}' if memory else '-'):>6}{extra}")
    print(f"   {'PASS' if worst_time <= 1.15 else 'FAIL'} time (worst {worst_time:.2f} where the peer "
          "finished, target <= 1.15)" + (f"; {'PASS' if ours_512 <= 3072 else 'FAIL'} ResNet-50 at 512 "
                                        f"images in {ours_512:.0f} MiB (target <= 3072)" if ours_512 else ""))


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
    parser.add_argument("--cases", default=CASES, help=f"model:images,... [{CASES}]")
    parser.add_argument("--memory-cap", type=float, default=16.0, help="GiB a run may hold [16]")
    parser.add_argument("--modelopt-site", help="a folder holding nvidia-modelopt[onnx] and its pins "
                        "(pip install --target DIR 'nvidia-modelopt[onnx]'), put first on its run's path")
    parser.add_argument("--child", choices=["ours", *PEERS], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    global MODELOPT_SITE
    MODELOPT_SITE = args.modelopt_site
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        if "1" in parts:
            versus_peer(Path(tmp), args.pairs, args.cases, args.memory_cap)
        if "2" in parts:
            latency_ratios(Path(tmp), args.iterations)
        if "3" in parts:
            accuracy(args.checkpoint, Path(tmp))


if __name__ == "__main__":
    main()
