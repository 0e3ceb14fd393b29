"""verify.py: check a resnet-edge bundle on the device, or anywhere.

On a Jetson it needs JetPack's Python, numpy and TensorRT plus cuda-python for CUDA memory
(`pip install cuda-python`); elsewhere it falls back to ONNX Runtime. It checks every file's
sha256, loads (or builds) the engine, runs the golden inputs, applies the parity gates carried
in thresholds.json, measures latency, records the device and writes verify.json.

Exit codes: 0 every gate holds; 1 a gate failed; 2 the bundle is damaged or the usage is wrong;
3 neither TensorRT nor ONNX Runtime can run here.

This file is resnet_edge/deploy/verify_bundle.py; the bundle carries a copy as verify.py, with
the torch-free modules it needs in lib/, so the device runs the same code as `resnet-edge verify`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:  # inside the resnet_edge package
    from ..parity import gates, metrics
    from ..runtime import ort, timing, trt_engine
except ImportError:  # as verify.py in an extracted bundle
    sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
    import gates
    import metrics
    import ort
    import timing
    import trt_engine

PRODUCED = ("engines/", "verify.json")  # made on the device after the bundle was written


class BundleError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_integrity(bundle: Path) -> None:
    manifest_path = bundle / "manifest.json"
    if not manifest_path.exists():
        raise BundleError(f"{bundle} has no manifest.json; it is not a resnet-edge bundle")
    files = json.loads(manifest_path.read_text())["files"]
    for name, entry in sorted(files.items()):
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"bundle file {name} is missing; re-copy the bundle")
        if sha256(path) != entry["sha256"]:
            raise BundleError(f"bundle file {name} does not match its sha256 in manifest.json "
                              "(damaged or modified); re-copy the bundle")
    listed = set(files) | {"manifest.json"}
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle).as_posix()
        if path.is_file() and rel not in listed and not rel.startswith(PRODUCED):
            raise BundleError(f"bundle file {rel} is not in manifest.json; remove it or re-copy the bundle")


def device_info() -> dict:
    info = {"machine": platform.machine(), "platform": platform.platform(),
            "python": platform.python_version(), "jetpack": None, "l4t": None, "power_mode": None,
            "tensorrt": None, "onnxruntime": None, "gpu": None}
    release = Path("/etc/nv_tegra_release")
    if release.exists():
        info["l4t"] = release.read_text().splitlines()[0].strip()
    if shutil.which("dpkg-query"):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"],
                             capture_output=True, text=True)
        info["jetpack"] = out.stdout.strip() or None
    if shutil.which("nvpmodel"):
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True)
        info["power_mode"] = " ".join(out.stdout.split()) or None
    if importlib.util.find_spec("tensorrt"):
        import tensorrt
        info["tensorrt"] = tensorrt.__version__
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    return info


class OrtRunner:
    """ONNX Runtime on the bundle's ONNX file for one precision (the fallback off-device)."""

    separates_device_time = False

    def __init__(self, bundle: Path, precision: str, recipe: str):
        path = bundle / trt_engine.ONNX_FILES[precision]
        if not path.exists():
            raise BundleError(f"{path.name} is not in this bundle", code=3)
        onnxruntime = ort.import_ort()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        # The tensorrt recipe's Q/DQ runs as written: TensorRT's numerics, not ORT-CPU's kernels.
        as_written = precision == "int8" and recipe == "tensorrt"
        self.session = ort.make_session(path, providers, disable_qdq_fusion=as_written)
        self.input_name = self.session.get_inputs()[0].name
        self.label = f"onnxruntime {precision} ({self.session.get_providers()[0]})"

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def close(self) -> None:
        pass


class TrtRunner:
    separates_device_time = True

    def __init__(self, bundle: Path, precision: str, build: bool):
        trt = trt_engine.import_trt()
        gpu, _ = trt_engine.current_gpu()
        engine = trt_engine.engine_path(bundle, gpu, trt.__version__, precision)
        if not engine.exists():
            if not build:
                raise BundleError(f"no {precision} engine for {gpu} / TensorRT {trt.__version__}; "
                                  f"run ./build_engine.sh {precision}", code=3)
            info = json.loads((bundle / "bundle.json").read_text())
            engine = trt_engine.build_engine(bundle, precision, max_batch=info["max_batch"],
                                             opt_batch=info["opt_batch"])
        self.runner = trt_engine.TrtRunner(engine)
        self.label = f"tensorrt {trt.__version__} {precision} ({gpu})"
        self.stage, self.execute = self.runner.stage, self.runner.execute
        self.synchronize = self.runner.synchronize

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.run(batch)

    def close(self) -> None:
        self.runner.close()


def choose_backend(requested: str) -> str:
    have_trt = importlib.util.find_spec("tensorrt") is not None
    have_ort = importlib.util.find_spec("onnxruntime") is not None
    if requested == "tensorrt" and not have_trt:
        raise BundleError("TensorRT is not importable here (JetPack ships it; x86: pip install tensorrt)", 3)
    if requested == "onnxruntime" and not have_ort:
        raise BundleError("onnxruntime is not installed (pip install onnxruntime)", 3)
    if requested != "auto":
        return requested
    if have_trt:
        return "tensorrt"
    if have_ort:
        return "onnxruntime"
    raise BundleError("neither TensorRT nor onnxruntime is available here", 3)


def verify(bundle: Path, *, precisions: list[str] | None = None, backend: str = "auto",
           build: bool = True, iterations: int = 50) -> dict:
    """Run the bundle's checks; the report's "exit_code" is what the command exits with."""
    bundle = Path(bundle)
    check_integrity(bundle)
    info = json.loads((bundle / "bundle.json").read_text())
    golden = {name: np.load(bundle / "golden" / f"{name}.npy") for name in ("inputs", "reference")}
    labels_path = bundle / "golden" / "labels.npy"
    labels = np.load(labels_path) if labels_path.exists() else None
    thresholds = {p: gates.Thresholds(**t) for p, t in json.loads((bundle / "thresholds.json").read_text()).items()}
    chosen = choose_backend(backend)
    wanted = precisions or info["precisions"]
    unknown = sorted(set(wanted) - set(info["precisions"]))
    if unknown:
        raise BundleError(f"this bundle has no {unknown[0]} model; it has {', '.join(info['precisions'])}")

    ref_acc = None
    if labels is not None:
        acc = metrics.Accuracy()
        acc.update(golden["reference"], labels)
        ref_acc = {"top1": acc.top1, "top5": acc.top5, "images": acc.images}
    rows = []
    batch = min(info["max_batch"], len(golden["inputs"]))
    for precision in wanted:
        runner = (TrtRunner(bundle, precision, build) if chosen == "tensorrt"
                  else OrtRunner(bundle, precision, info.get("int8_recipe", "tensorrt")))
        comparison, accuracy = metrics.LogitComparison(), metrics.Accuracy()
        for start in range(0, len(golden["inputs"]), batch):
            x = np.ascontiguousarray(golden["inputs"][start:start + batch])
            out = runner.run(x)
            comparison.update(golden["reference"][start:start + batch], out)
            if labels is not None:
                accuracy.update(out, labels[start:start + batch])
        acc = ({"top1": accuracy.top1, "top5": accuracy.top5, "images": accuracy.images,
                "drop_pt": (ref_acc["top1"] - accuracy.top1) * 100} if labels is not None else None)
        summary = comparison.summary()
        results = gates.evaluate_gates(thresholds[precision], summary, acc, ref_acc)
        latency = timing.measure(runner, np.ascontiguousarray(golden["inputs"][:batch]),
                                 iterations=iterations, warmup=min(10, iterations))
        runner.close()
        rows.append({"precision": precision, "backend": runner.label, "metrics": summary,
                     "accuracy": acc, "latency": latency,
                     "gates": [dict(vars(g), status=g.status) for g in results]})
    failed = [f"{r['precision']} {g['gate']}" for r in rows for g in r["gates"] if g["passed"] is False]
    return {"schema": "resnet-edge.verify/1", "bundle": info, "backend": chosen,
            "device": device_info(), "golden_images": int(len(golden["inputs"])),
            "reference_accuracy": ref_acc, "results": rows, "failed_gates": failed,
            "passed": not failed, "exit_code": 1 if failed else 0,
            "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Verify a resnet-edge bundle on this device.")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--precision", action="append", choices=["fp32", "fp16", "int8"],
                        help="repeatable [every precision in the bundle]")
    parser.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime"], default="auto")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building a missing engine")
    parser.add_argument("--iterations", type=int, default=50, help="latency iterations")
    parser.add_argument("--json", type=Path, help="[<bundle>/verify.json]")
    args = parser.parse_args(argv)
    try:
        report = verify(args.bundle, precisions=args.precision, backend=args.backend,
                        build=not args.no_build, iterations=args.iterations)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except trt_engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    out = args.json or args.bundle / "verify.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in report["results"]:
        lat = row["latency"]["host_to_host"]
        acc = f", top-1 {row['accuracy']['top1']:.2%}" if row["accuracy"] else ""
        verdict = "FAIL: " + ", ".join(g["gate"] for g in row["gates"] if g["passed"] is False) \
            if any(g["passed"] is False for g in row["gates"]) else "pass"
        print(f"{row['backend']}: max abs {row['metrics']['max_abs']:.3g}, top-1 agreement "
              f"{row['metrics']['top1_agreement']:.2%}{acc}, p50 {lat['p50_ms']:.2f} ms "
              f"(batch {lat['batch_size']}): {verdict}")
    print(f"{'PASS' if report['passed'] else 'FAIL'}; wrote {out}")
    return report["exit_code"]


if __name__ == "__main__":
    raise SystemExit(main())
