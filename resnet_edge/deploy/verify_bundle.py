"""verify.py: check a resnet-edge bundle on the device, or anywhere.

On a Jetson it needs JetPack's Python, numpy and TensorRT plus cuda-python for CUDA memory
(the bundle's README gives the pip line for its CUDA); elsewhere it falls back to ONNX Runtime
and says that no engine was tested. It checks that every file is a regular file listed in
manifest.json with its sha256 (and, with --key, the Ed25519 signature over manifest.json),
validates what the bundle declares, loads (or builds) the engine, runs the golden inputs,
applies the parity gates carried in thresholds.json, measures latency, records the device and
writes verify.json to the device folder beside the bundle, never into it.

--bundle takes the extracted folder or the .tar.gz itself; to check a bundle you do not trust
yet, run a verify.py you already trust (from an earlier bundle, or `resnet-edge verify`) on it.

Over 400 lines because it is the one script a device runs: it must stand alone beside lib/.

Exit codes: 0 every gate holds; 1 a gate failed; 2 the bundle is damaged, forged or the usage is
wrong; 3 TensorRT (with --require-tensorrt), ONNX Runtime, cryptography or a matching
cuda-python is missing.

This file is resnet_edge/deploy/verify_bundle.py; the bundle carries a copy as verify.py, with
the torch-free modules it needs in lib/, so the device runs the same code as `resnet-edge verify`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:  # inside the resnet_edge package
    from .. import strictjson
    from .. import metrics, outputs
    from ..parity import gates
    from ..runtime import cpu, ort, timing, trt_engine, trt_plan, trt_rules, trt_runner
    from . import archive, signing
except ImportError:  # as verify.py in an extracted bundle
    # before ONNX Runtime loads: it sends no telemetry from the device and keeps no session
    # file in TMPDIR unless ORT_DISABLE_TELEMETRY=0 is set (ONNX Runtime 1.29+)
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    # before the first lib/ import: Python would cache lib/__pycache__/*.pyc into the bundle,
    # and the manifest check refuses every file manifest.json does not list
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
    import archive
    import cpu
    import gates
    import metrics
    import ort
    import outputs
    import signing
    import strictjson
    import timing
    import trt_engine
    import trt_plan
    import trt_rules
    import trt_runner

BundleError = archive.BundleError
PRECISIONS = ("fp32", "fp16", "int8")
LIMITS = {"max_batch": 4096, "side": 8192, "classes": 1_000_000, "golden": 100_000}


class Bundle:
    """A bundle folder whose files, declarations, signature and golden data have been checked."""

    def __init__(self, folder: Path, key: Path | None = None, *, allow_unsigned: bool = False,
                 min_created: str | None = None):
        if key is None and not allow_unsigned:
            raise BundleError(NEEDS_KEY)
        self.folder = Path(folder)
        self.manifest, manifest_bytes, self.device_engines = archive.check_folder(self.folder)
        self.manifest_sha256 = archive.manifest_digest(manifest_bytes)
        signature_path = self.folder / archive.SIGNATURE
        signature = signature_path.read_bytes() if signature_path.is_file() else None
        try:
            self.signature = signing.check(manifest_bytes, signature, key)
        except signing.SignatureError as exc:
            raise BundleError(str(exc), exc.code) from None
        self.identity = check_identity(self.manifest, self.folder.name, min_created)
        self.info = read_info(self.folder, self.manifest)
        try:
            self.thresholds = gates.read_table(_json(self.folder, "thresholds.json"))
        except ValueError as exc:
            raise BundleError(str(exc)) from None
        self.inputs, self.reference, self.labels = read_golden(self.folder, self.info)


NEEDS_KEY = ("verify needs the signer's public key, so that a bundle anyone could have made or "
             "changed does not pass: --key NAME.pub (or RESNET_EDGE_VERIFY_KEY=NAME.pub set once "
             "on the device); --allow-unsigned checks the files against manifest.json only")


def check_identity(manifest: dict, name: str, min_created: str | None) -> dict | None:
    """The bundle's signed record of itself, held against its name and, with `min_created`, its
    age: a signed bundle repacked under another name, or an older one replayed, is refused."""
    identity = archive.read_identity(manifest)
    if identity and identity["name"] != name:
        raise BundleError(f"the bundle was made as {identity['name']!r} but is named {name!r}: "
                          "renamed or repacked after it was made; verify it under its own name")
    if min_created is not None:
        min_created = archive.created_bound(min_created)  # callers of verify() checked as the CLI
        if identity is None:
            raise BundleError("the bundle records no creation time (made before bundles were "
                              "dated), so --min-created cannot hold it; make it again")
        if identity["created"] < min_created:
            raise BundleError(f"the bundle was made {identity['created']}, before --min-created "
                              f"{min_created}: an older bundle than this device runs")
    return identity


def onnx_file(info: dict, precision: str) -> str:
    """The ONNX file that stands for `precision`: for int8 the file the target's TensorRT builds
    from, so ONNX Runtime checks the very file the device will build."""
    if precision == "int8":
        return trt_plan.build_plan(info["tensorrt"], "int8").onnx_file
    return trt_rules.ONNX_FILES[precision]


def _json(folder: Path, name: str):
    try:
        return json.loads((folder / name).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle file {name} is missing; re-copy the bundle") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle file {name} is not JSON ({exc})") from None


def _count(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def read_info(folder: Path, manifest: dict) -> dict:
    """bundle.json, every field this script relies on checked."""
    info = _json(folder, "bundle.json")
    problems = []
    if not isinstance(info, dict):
        raise BundleError("bundle.json is not a JSON object; the bundle is damaged")
    precisions = info.get("precisions")
    if (not isinstance(precisions, list) or not precisions or len(set(precisions)) != len(precisions)
            or not set(precisions) <= set(PRECISIONS)):
        problems.append(f"precisions {precisions!r} (use a list of {', '.join(PRECISIONS)})")
    info.setdefault("min_batch", 1)  # bundles before batch profiles
    if not _count(info.get("max_batch"), 1, LIMITS["max_batch"]):
        problems.append(f"max_batch {info.get('max_batch')!r} (1..{LIMITS['max_batch']})")
    elif not _count(info.get("min_batch"), 1, info["max_batch"]):
        problems.append(f"min_batch {info.get('min_batch')!r} (1..max_batch)")
    elif not _count(info.get("opt_batch"), info["min_batch"], info["max_batch"]):
        problems.append(f"opt_batch {info.get('opt_batch')!r} (min_batch..max_batch)")
    shape = info.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and shape[0] in (1, 3)
            and all(_count(d, 1, LIMITS["side"]) for d in shape)):
        problems.append(f"input_shape {shape!r} (C, H, W)")
    if not _count(info.get("num_classes"), 1, LIMITS["classes"]):
        problems.append(f"num_classes {info.get('num_classes')!r}")
    if not isinstance(info.get("input_name"), str) or not info["input_name"]:
        problems.append("input_name")
    cuda_python = info.get("cuda_python")
    if cuda_python is not None and not (isinstance(cuda_python, str) and len(cuda_python) < 40
                                        and all(c in "<>=.,0123456789" for c in cuda_python)):
        problems.append(f"cuda_python {cuda_python!r}")
    opsets = info.setdefault("opsets", {})  # bundles before opsets: the parser will say
    if not (isinstance(opsets, dict) and all(isinstance(k, str) and _count(v, 1, 1000)
                                             for k, v in opsets.items())):
        problems.append(f"opsets {opsets!r} (file: opset)")
    near_tie = info.setdefault("near_tie", {})  # bundles before near-ties: exact ties only
    if not (isinstance(near_tie, dict) and all(
            p in PRECISIONS and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and v >= 0 for p, v in near_tie.items())):
        problems.append(f"near_tie {near_tie!r} (precision: a finite margin >= 0)")
    try:
        trt_plan.build_plan(str(info.get("tensorrt")), "fp32")
    except ValueError:
        problems.append(f"tensorrt {info.get('tensorrt')!r}")
    if problems:
        raise BundleError(f"bundle.json declares an invalid {problems[0]}; the bundle is damaged "
                          "or was not made by `resnet-edge bundle`")
    for precision in precisions:
        name = onnx_file(info, precision)
        if name not in manifest["files"]:
            raise BundleError(f"bundle.json lists {precision}, but {name} is not in the bundle")
    return info


def _load_array(folder: Path, name: str) -> np.ndarray:
    try:
        return np.load(folder / "golden" / name, allow_pickle=False)
    except FileNotFoundError:
        raise BundleError(f"bundle file golden/{name} is missing; re-copy the bundle") from None
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"golden/{name} is not a plain numeric .npy array ({str(exc)[:80]})") from None


def read_golden(folder: Path, info: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(inputs, reference logits, labels or None), shapes, types and values checked."""
    inputs = _load_array(folder, "inputs.npy")
    reference = _load_array(folder, "reference.npy")
    count = len(inputs) if inputs.ndim else 0
    if (inputs.dtype != np.float32 or inputs.ndim != 4 or list(inputs.shape[1:]) != info["input_shape"]
            or not 1 <= count <= LIMITS["golden"]):
        raise BundleError(f"golden/inputs.npy is {inputs.dtype} {inputs.shape}; expected float32 "
                          f"N x {' x '.join(map(str, info['input_shape']))} with N >= 1")
    if reference.dtype != np.float32 or reference.shape != (count, info["num_classes"]):
        raise BundleError(f"golden/reference.npy is {reference.dtype} {reference.shape}; expected "
                          f"float32 {count} x {info['num_classes']}")
    for name, array in (("inputs", inputs), ("reference", reference)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise BundleError(f"golden/{name}.npy holds {bad} non-finite values (NaN or inf); "
                              "nothing can be checked against it")
    labels = None
    if (folder / "golden" / "labels.npy").exists():
        labels = _load_array(folder, "labels.npy")
        if (labels.shape != (count,) or labels.dtype.kind not in "iu"
                or (count and (labels.min() < 0 or labels.max() >= info["num_classes"]))):
            raise BundleError(f"golden/labels.npy must hold {count} integer labels in "
                              f"[0, {info['num_classes']})")
        labels = labels.astype(np.int64)
    return inputs, reference, labels


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


# IEEE fp32 on CUDA (its default computes fp32 in TF32), as parity runs it
CUDA_SESSION = [("CUDAExecutionProvider", {"use_tf32": "0"})]


class OrtRunner:
    """ONNX Runtime on the bundle's ONNX file for one precision (the fallback off-device)."""

    separates_device_time = False

    def __init__(self, bundle: Bundle, precision: str):
        path = bundle.folder / onnx_file(bundle.info, precision)
        onnxruntime = ort.import_ort()
        # The tensorrt recipe's Q/DQ runs as written: TensorRT's numerics, not ORT-CPU's kernels.
        as_written = precision == "int8"
        self.session = None
        # RESNET_EDGE_DEVICE=cpu pins it to the CPU, as it pins every resnet-edge command
        if ("CUDAExecutionProvider" in onnxruntime.get_available_providers()
                and os.environ.get("RESNET_EDGE_DEVICE", "").strip().lower() != "cpu"):
            try:
                self.session = ort.make_session(path, CUDA_SESSION,
                                                disable_qdq_fusion=as_written)
            except Exception:  # noqa: BLE001 (CUDA libraries missing: the CPU provider runs it)
                self.session = None
        if self.session is None:
            self.session = ort.make_session(path, disable_qdq_fusion=as_written)
        self.int8_path = ort.int8_path(None) if precision == "int8" else None
        self.input_name = self.session.get_inputs()[0].name
        self.batch_range = (bundle.info["min_batch"], bundle.info["max_batch"])
        self.max_batch = bundle.info["max_batch"]
        provider = self.session.get_providers()[0].replace("ExecutionProvider", "")
        self.label = f"ort {precision} ({path.name}, {provider})"  # parity's names

    def run(self, batch: np.ndarray) -> np.ndarray:
        return ort.run_batch(self.session, self.input_name, batch, self.batch_range)

    def close(self) -> None:
        pass


class TrtRunner:
    separates_device_time = True
    int8_path = None  # TensorRT's own kernels: ORT's int8 paths do not apply

    def __init__(self, bundle: Bundle, precision: str, build: bool, devices: Path,
                 dla_core: int | None = None):
        trt = trt_runner.import_trt()
        wanted = bundle.info.get("cuda_python")
        gpu, _ = trt_runner.current_gpu(trt_runner.import_cudart(wanted))
        engine = trt_rules.engine_path(devices, gpu, trt.__version__, precision, dla_core)
        dla = "" if dla_core is None else f" --dla-core {dla_core} --gpu-fallback"
        if not engine.exists():
            if not build or dla_core is not None:  # a DLA build is the user's call (its flags)
                raise BundleError(f"no {precision} engine for {gpu} / TensorRT {trt.__version__} in "
                                  f"{engine.parent} ({engine.name}); run ./build_engine.sh {precision}{dla}",
                                  code=3)
            note = trt_rules.family_note(bundle.info["tensorrt"], trt.__version__)
            if note:
                say(note, sys.stderr)
            plan = trt_plan.build_plan(trt.__version__, precision)
            problem = trt_rules.opset_problem(plan.onnx_file, bundle.info["opsets"].get(plan.onnx_file),
                                               trt.__version__)
            if problem:
                raise BundleError(problem)
            try:
                engine = trt_engine.build_engine(bundle.folder, precision, out_dir=engine.parent,
                                                 max_batch=bundle.info["max_batch"],
                                                 opt_batch=bundle.info["opt_batch"],
                                                 min_batch=bundle.info["min_batch"],
                                                 cuda_python=wanted)
            except ValueError as exc:  # what this TensorRT or GPU cannot build
                raise BundleError(str(exc)) from None
        meta = trt_rules.read_engine_meta(engine)
        listed = bundle.manifest["files"].get(str(meta.get("onnx")), {}).get("sha256")
        if listed is None or meta.get("onnx_sha256") != listed:
            raise BundleError(f"{engine} was not built from this bundle's {meta.get('onnx')} (its "
                              f"record names another file); rebuild it: ./build_engine.sh {precision}{dla}")
        self.runner = trt_runner.TrtRunner(engine, cuda_python=wanted)
        # the engine's profile, not the bundle's: a DLA engine runs its one (opt) batch size
        self.max_batch = self.runner.max_batch
        self.label = f"trt {precision} (TensorRT {trt.__version__}, {gpu})"
        self.stage, self.execute = self.runner.stage, self.runner.execute
        self.synchronize = self.runner.synchronize

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.run(batch)

    def close(self) -> None:
        self.runner.close()


BACKENDS = ("auto", "trt", "ort")  # the names parity and bench use too


def choose_backend(requested: str, require_tensorrt: bool = False) -> str:
    """'trt' or 'ort'. auto takes TensorRT where it imports and falls back to ONNX Runtime,
    which checks the ONNX files but tests no engine; --require-tensorrt forbids that."""
    if requested not in BACKENDS:
        raise BundleError(f"unknown backend {requested!r}; use {', '.join(BACKENDS)}")
    have_trt = importlib.util.find_spec("tensorrt") is not None
    have_ort = importlib.util.find_spec("onnxruntime") is not None
    if (requested == "trt" or require_tensorrt) and not have_trt:
        raise BundleError("TensorRT is not importable here, so no engine can be tested (JetPack "
                          "ships it; x86: pip install 'tensorrt-cu12>=10,<11', or tensorrt-cu13 for a "
                          "CUDA 13 driver: the plain `tensorrt` is a stub that fetches the newest "
                          "TensorRT from NVIDIA's index at install time)", 3)
    if requested == "ort" and not have_ort:
        raise BundleError("onnxruntime is not installed (pip install onnxruntime)", 3)
    if requested != "auto":
        return requested
    if have_trt:
        return "trt"
    if have_ort:
        return "ort"
    raise BundleError("neither TensorRT nor onnxruntime is available here", 3)


# timed iterations per precision when --iterations is not given: the device's own engine is what
# latency is for; ONNX Runtime off the device times few, since its latency says little there
DEVICE_ITERATIONS, FALLBACK_ITERATIONS = 100, 10


def verify(folder: Path, *, precisions: list[str] | None = None, backend: str = "auto",
           build: bool = True, iterations: int | None = None, key: Path | None = None,
           allow_unsigned: bool = False, min_created: str | None = None,
           device_dir: Path | None = None, require_tensorrt: bool = False,
           step=lambda message: None, dla_core: int | None = None) -> dict:
    """Run the bundle's checks; the report's "exit_code" is what the command exits with.
    Without `key` only `allow_unsigned` lets a bundle through, and then nothing is
    authenticated; `min_created` refuses a bundle made before that time. `step` hears a line
    per precision (what it runs, then how long its timing will take) as the work goes."""
    if iterations is not None and iterations < 1:
        raise BundleError(f"--iterations must be at least 1, got {iterations}")
    bundle = Bundle(Path(folder), key, allow_unsigned=allow_unsigned, min_created=min_created)
    info = bundle.info
    chosen = choose_backend(backend, require_tensorrt)
    wanted = precisions or info["precisions"]
    unknown = sorted(set(wanted) - set(info["precisions"]))
    if unknown:
        raise BundleError(f"this bundle has no {unknown[0]} model; it has {', '.join(info['precisions'])}")
    devices = Path(device_dir) if device_dir else trt_rules.device_dir(bundle.folder)

    ref_acc = None
    if bundle.labels is not None:
        acc = metrics.Accuracy()
        acc.update(bundle.reference, bundle.labels)
        ref_acc = {"top1": acc.top1, "top5": acc.top5, "images": acc.images}
    if iterations is None:
        iterations = DEVICE_ITERATIONS if chosen == "trt" else FALLBACK_ITERATIONS
        if chosen != "trt":
            step(f"timing {iterations} iterations per precision on ONNX Runtime, not the device's "
                 "engine (--iterations to change)")
    rows = []
    for index, precision in enumerate(wanted, 1):
        step(f"{precision} ({index} of {len(wanted)}): {len(bundle.inputs)} golden images")
        runner = (TrtRunner(bundle, precision, build, devices, dla_core) if chosen == "trt"
                  else OrtRunner(bundle, precision))
        batch = min(runner.max_batch, len(bundle.inputs))
        comparison, accuracy = metrics.LogitComparison(), metrics.Accuracy()
        for start in range(0, len(bundle.inputs), batch):
            x = np.ascontiguousarray(bundle.inputs[start:start + batch])
            out = runner.run(x)
            comparison.update(bundle.reference[start:start + batch], out)
            if bundle.labels is not None:
                accuracy.update(out, bundle.labels[start:start + batch])
        acc = ({"top1": accuracy.top1, "top5": accuracy.top5, "images": accuracy.images,
                "drop_pt": (ref_acc["top1"] - accuracy.top1) * 100} if ref_acc else None)
        # near-ties (reference margin within the error bundle measured for this precision)
        # are set aside: they flip under any correct model, so they cannot fail one
        summary = comparison.summary(near_tie=float(info["near_tie"].get(precision, 0.0)))
        results = gates.evaluate_gates(gates.for_precision(bundle.thresholds, precision), summary,
                                       acc, ref_acc)
        timed = np.ascontiguousarray(bundle.inputs[:batch])
        started = time.perf_counter()
        runner.run(timed)  # one run first: what each of the timed ones will cost
        each = time.perf_counter() - started
        warmup = min(10, iterations)
        step(f"{precision}: timing {iterations} iterations at batch {batch}, about "
             f"{max(each * (iterations + warmup), 0.1):.1f} s")
        latency = timing.measure(runner, timed, iterations=iterations, warmup=warmup)
        runner.close()
        rows.append({"precision": precision, "backend": runner.label, "metrics": summary,
                     "int8_path": runner.int8_path,
                     "accuracy": acc, "latency": latency,
                     "gates": [dict(vars(g), status=g.status) for g in results]})
    failed = [f"{r['precision']} {g['gate']}" for r in rows for g in r["gates"] if g["passed"] is False]
    return {"schema": gates.VERIFY_SCHEMA, "bundle": info, "backend": chosen,
            "engine_tested": chosen == "trt",
            "integrity": {"manifest_sha256": bundle.manifest_sha256,
                          "files": len(bundle.manifest["files"]), **bundle.signature,
                          "identity": bundle.identity,
                          "unsigned_engines": {name: archive.sha256_file(bundle.folder / name)
                                               for name in bundle.device_engines}},
            "device": device_info(), "cpu": cpu.cpu_features(), "device_dir": str(devices),
            "golden_images": int(len(bundle.inputs)), "reference_accuracy": ref_acc,
            "results": rows, "failed_gates": failed, "passed": not failed,
            "exit_code": 1 if failed else 0,
            "verified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def integrity_lines(report: dict) -> list[str]:
    """What can honestly be said about where the bundle came from, and what was tested."""
    integrity = report["integrity"]
    digest = integrity["manifest_sha256"]
    lines = [f"integrity: all {integrity['files']} files match manifest.json (sha256 {digest})"]
    identity = integrity.get("identity")
    if identity:
        lines.append(f"bundle: {identity['name']}, target {identity['target']}, release "
                     f"{identity['release'] or '-'}, made {identity['created']}")
    if integrity["verified"]:
        lines.append(f"signature: valid, made by key {integrity['key_id']}, over the files and the "
                     "bundle line above")
    else:
        held = f"signed by key {integrity['key_id']}, not checked" if integrity["signed"] else "unsigned"
        lines.append(f"warning: NOT AUTHENTICATED (--allow-unsigned; {held}): anyone who could write "
                     "this bundle could have made it; compare the manifest sha256 above with the "
                     "one `resnet-edge bundle` printed, or verify with --key")
    for name, digest in sorted((integrity.get("unsigned_engines") or {}).items()):
        lines.append(f"warning: {name} (sha256 {digest[:16]}) lies beside the ONNX model: nvinfer "
                     "loads it at its next start instead of building from the checked model, and "
                     "no signature covers it; delete it unless ./build_engine.sh made it here")
    if not report["engine_tested"]:
        lines.append(FALLBACK)
    return lines


FALLBACK = ("warning: ONNX Runtime ran the bundle's ONNX files instead of TensorRT, so no engine "
            "was tested: this checks the files and the model, not what the device will run "
            "(run where TensorRT is, or pass --require-tensorrt to make this an error)")


def verdict_line(report: dict) -> str:
    result = "PASS" if report["passed"] else "FAIL"
    return result if report["engine_tested"] else f"{result} (ONNX Runtime only: no engine tested)"


def say(text: str, stream=None) -> None:
    """A line of this script's output, with what a terminal would act on (escape sequences,
    bidirectional controls, lone surrogates from a manifest's text) shown as its escape."""
    print(strictjson.visible(text), file=stream or sys.stdout, flush=True)


def _write_report(report: dict, path: Path) -> None:
    """verify.json as every output of the tool is written (`outputs.written`): /dev/null and
    /dev/stdout written through, a regular file replaced whole, anything else refused."""
    try:
        if not outputs.is_stream(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        with outputs.written(path) as tmp:
            tmp.write_text(strictjson.dumps(report, indent=2) + "\n")
    except (outputs.OutputRefused, OSError) as exc:
        raise BundleError(f"cannot write the report: {exc}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Verify a resnet-edge bundle on this device.")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent,
                        help="bundle folder or .tar.gz [the folder this script is in]")
    parser.add_argument("--key", type=Path, default=os.environ.get("RESNET_EDGE_VERIFY_KEY") or None,
                        help="the signer's public key (NAME.pub): refuse a bundle it did not sign "
                        "[$RESNET_EDGE_VERIFY_KEY]")
    parser.add_argument("--allow-unsigned", action="store_true",
                        help="without a key, check the files against manifest.json only: nothing "
                        "is authenticated (demos)")
    parser.add_argument("--min-created", help="refuse a bundle made before this date "
                        "(YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ): no older bundle replayed")
    parser.add_argument("--precisions", help="comma list of " + ", ".join(PRECISIONS)
                        + " [every precision in the bundle]")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="trt (TensorRT engines), ort (ONNX Runtime on the ONNX files), or "
                        "auto: trt where TensorRT is, else ort with a warning [auto]")
    parser.add_argument("--require-tensorrt", action="store_true",
                        help="exit 3 instead of falling back to ONNX Runtime")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building a missing engine")
    parser.add_argument("--dla-core", type=int, help="check the engine build_engine.sh --dla-core N built "
                        "(model.<precision>.dla<N>.engine) instead of the GPU's")
    parser.add_argument("--iterations", type=int,
                        help=f"timed iterations per precision [{DEVICE_ITERATIONS} with TensorRT; "
                        f"{FALLBACK_ITERATIONS} on ONNX Runtime off the device]")
    parser.add_argument("--device-dir", type=Path, help="engines and reports [<bundle>.device]")
    parser.add_argument("--json", type=Path, help="[<device dir>/verify.json]")
    args = parser.parse_args(argv)
    try:
        pinned = os.environ.get("RESNET_EDGE_DEVICE", "").strip().lower()
        if pinned not in ("", "auto", "cpu", "cuda"):
            raise BundleError(f"$RESNET_EDGE_DEVICE={pinned!r} is not one of auto, cpu, cuda")
        args.key = Path(args.key) if args.key else None
        min_created = archive.created_bound(args.min_created) if args.min_created is not None else None
        devices = args.device_dir or trt_rules.device_dir(
            args.bundle if args.bundle.is_dir() else archive.archive_root(args.bundle))
        # a refused --json is refused before the work, and never lands on the bundle, the key
        # or an engine
        outputs.refuse_clobbering({"--json": args.json}, reads=(args.bundle, args.key),
                                  guards=(devices,))
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.bundle
            if folder.is_file():
                folder = archive.safe_extract(folder, tmp)
            wanted = [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else None
            started = time.perf_counter()

            def step(message):  # a line per step, timed, on stderr: never silent for minutes
                say(f"[{time.perf_counter() - started:7.1f} s] {message}", sys.stderr)
            report = verify(folder, precisions=wanted, backend=args.backend,
                            build=not args.no_build, iterations=args.iterations, key=args.key,
                            allow_unsigned=args.allow_unsigned, min_created=min_created,
                            device_dir=devices, require_tensorrt=args.require_tensorrt, step=step,
                            dla_core=args.dla_core)
    except BundleError as exc:
        say(f"error: {exc}", sys.stderr)
        return exc.code
    except outputs.OutputRefused as exc:
        say(f"error: {exc}", sys.stderr)
        return 2
    except (trt_rules.EngineError, ort.MissingBackend) as exc:  # e.g. an ONNX Runtime too old
        say(f"error: {exc}", sys.stderr)
        return 3
    out = args.json or Path(report["device_dir"]) / "verify.json"
    try:
        _write_report(report, out)
    except BundleError as exc:
        say(f"error: {exc}", sys.stderr)
        return exc.code
    for line in integrity_lines(report):
        say(line)
    for row in report["results"]:
        lat = row["latency"]["host_to_host"]
        acc = f", top-1 {row['accuracy']['top1']:.2%}" if row["accuracy"] else ""
        bad = [g for g in row["gates"] if g["passed"] is False]
        verdict = "FAIL: " + ", ".join(gates.describe(g) for g in bad) if bad else "pass"
        decisive = row["metrics"]["decisive"]
        say(f"{row['backend']}: max abs {row['metrics']['max_abs']:.3g}, top-1 agreement "
              f"{decisive['agree']}/{decisive['images']} decisive images (95 % lower bound "
              f"{decisive['lower_bound']:.2%}; {decisive['near_ties']} near-ties set aside){acc}, "
              f"p50 {lat['p50_ms']:.2f} ms (batch {lat['batch_size']}): {verdict}")
    say(f"{verdict_line(report)}; wrote {strictjson.visible(str(out), one_line=True)}")
    return report["exit_code"]


if __name__ == "__main__":
    raise SystemExit(main())
