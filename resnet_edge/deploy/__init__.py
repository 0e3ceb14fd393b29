"""Jetson deployment bundles: everything a device needs to build its own engine and prove it
still matches PyTorch, in one tar.gz; and their safe extraction and verification anywhere."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..artifacts import atomic_path, ensure_writable_dir, sha256_file
from ..calibration import CACHE_NAME, INT8_NAME, quantization_info
from ..calibration.dataset import balanced_indices
from ..data import batches, check_classes, open_data
from ..errors import BadInput
from ..export import FP16_NAME, ONNX_NAME
from ..parity.gates import Thresholds, load_thresholds
from ..parity.run import open_workdir
from ..runtime import trt_engine
from ..runtime.backends import TorchBackend

TARGETS = {
    "jetpack5": {"tensorrt": "8.5.2", "max_opset": 17, "about": "JetPack 5.1 (TensorRT 8.5)"},
    "jetpack6": {"tensorrt": "10.3.0", "max_opset": 20, "about": "JetPack 6.1/6.2 (TensorRT 10.3)"},
    "x86-trt10": {"tensorrt": "10.13.0", "max_opset": 20, "about": "x86 with TensorRT 10.x"},
    "x86-trt11": {"tensorrt": "11.4.0", "max_opset": 20, "about": "x86 with TensorRT 11.x"},
}
HERE = Path(__file__).resolve().parent
RUNTIME = HERE.parent / "runtime"
PARITY = HERE.parent / "parity"
LIB = {"trt_engine.py": RUNTIME / "trt_engine.py", "timing.py": RUNTIME / "timing.py",
       "ort.py": RUNTIME / "ort.py", "gates.py": PARITY / "gates.py", "metrics.py": PARITY / "metrics.py"}
MAX_EXTRACT_BYTES = 8 << 30
MAX_MEMBERS = 10_000


def opset_of(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def make_bundle(workdir: str | Path, target: str, out: str | Path | None = None, *,
                eval_spec: str = "digits:test", golden: int = 100, max_batch: int = 32,
                opt_batch: int = 8, thresholds: dict[str, Thresholds] | None = None,
                step=lambda m: None) -> Path:
    if target not in TARGETS:
        raise BadInput(f"unknown --target {target!r}; use {', '.join(TARGETS)}")
    if golden < 1:
        raise BadInput(f"--golden must be at least 1, got {golden}")
    workdir = Path(workdir)
    card, model = open_workdir(workdir)
    spec = TARGETS[target]
    files = [f for f in (ONNX_NAME, FP16_NAME, INT8_NAME) if (workdir / f).exists()]
    for name in files:
        opset = opset_of(workdir / name)
        if opset > spec["max_opset"]:
            raise BadInput(f"{target} ({spec['about']}) reads ONNX opset <= {spec['max_opset']}, but "
                           f"{name} is opset {opset}; export with --exporter torchscript (opset 17) "
                           "into a new work dir, calibrate it, and bundle that")
    precisions = [p for p, f in (("fp32", ONNX_NAME), ("fp16", FP16_NAME), ("int8", INT8_NAME)) if f in files]
    out = Path(out) if out else workdir / f"{workdir.name}-{target}.tar.gz"
    root_name = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    ensure_writable_dir(out.parent)

    source = open_data(eval_spec, input_shape=card.preprocess.input_shape)
    check_classes(source, card.num_classes, f"the model ({card.arch})")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / root_name
        (stage / "golden").mkdir(parents=True)
        (stage / "lib").mkdir()
        step("writing golden inputs and PyTorch fp32 reference outputs")
        indices = balanced_indices(source, golden)
        inputs, labels = [], []
        for x, y in batches(source, card.preprocess, 64, indices=indices):
            inputs.append(x.numpy())
            labels.append(y.numpy())
        golden_inputs = np.concatenate(inputs)
        reference = TorchBackend(model)
        np.save(stage / "golden" / "inputs.npy", golden_inputs)
        np.save(stage / "golden" / "reference.npy",
                np.concatenate([reference.run(golden_inputs[i:i + 64]) for i in range(0, len(golden_inputs), 64)]))
        if source.has_labels:
            np.save(stage / "golden" / "labels.npy", np.concatenate(labels).astype(np.int64))

        step(f"collecting the files {spec['about']} needs")
        for name in files:
            shutil.copy2(workdir / name, stage / name)
        if (workdir / CACHE_NAME).exists() and "int8" in precisions:
            text = (workdir / CACHE_NAME).read_text()
            (stage / CACHE_NAME).write_text(trt_engine.reheader_cache(text, spec["tensorrt"]))
        for name, src in LIB.items():
            shutil.copy2(src, stage / "lib" / name)
        shutil.copy2(HERE / "verify_bundle.py", stage / "verify.py")
        shutil.copy2(HERE / "build_engine.sh", stage / "build_engine.sh")
        os.chmod(stage / "verify.py", 0o755)
        os.chmod(stage / "build_engine.sh", 0o755)
        names = card.class_names or [str(i) for i in range(card.num_classes)]
        (stage / "labels.txt").write_text("\n".join(names) + "\n")
        (stage / "preprocess.json").write_text(json.dumps(card.preprocess.to_dict(), indent=2) + "\n")
        gates = thresholds or load_thresholds()
        (stage / "thresholds.json").write_text(json.dumps({p: vars(t) for p, t in gates.items()}, indent=2) + "\n")
        info = {"target": target, "about": spec["about"], "tensorrt": spec["tensorrt"],
                "arch": card.arch, "num_classes": card.num_classes, "input_name": "input",
                "input_shape": list(card.preprocess.input_shape), "max_batch": max_batch,
                "opt_batch": min(opt_batch, max_batch), "precisions": precisions,
                "int8_recipe": quantization_info(workdir / INT8_NAME).get("recipe") if "int8" in precisions else None,
                "golden_data": eval_spec, "resnet_edge": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_plans": {p: vars(trt_engine.build_plan(spec["tensorrt"], p)) for p in precisions}}
        (stage / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        (stage / "README.md").write_text(_readme(root_name, card.arch, spec, precisions))
        manifest = {"files": {p.relative_to(stage).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                              for p in sorted(stage.rglob("*")) if p.is_file()}}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

        step(f"writing {out}")
        with atomic_path(out) as tmp_tar:
            with tarfile.open(tmp_tar, "w:gz") as tar:
                tar.add(stage, arcname=root_name)
    return out


def _readme(root: str, arch: str, spec: dict, precisions: list[str]) -> str:
    return f"""# {root}

{arch} for {spec['about']}, made by resnet-edge {__version__}. Precisions: {', '.join(precisions)}.

On the device, with JetPack's own Python and TensorRT:

```
pip install cuda-python        # the one extra package: CUDA memory for verify.py
./build_engine.sh int8         # trtexec with the flags this TensorRT needs (or the Python builder)
python3 verify.py              # sha256 of every file, golden inputs vs PyTorch, gates, latency
```

`verify.py` writes verify.json (device, JetPack, TensorRT, power mode from `nvpmodel -q`,
accuracy and latency) and exits 0 when every gate in thresholds.json holds, 1 when one fails,
2 when a file is damaged, 3 when TensorRT cannot run. Without TensorRT it checks the ONNX files
with ONNX Runtime instead. Engines are tied to the GPU and TensorRT version that built them:
build on the device.

Files: model*.onnx (the ONNX files this TensorRT needs), calibration.cache (implicit INT8 on
TensorRT <= 10: `./build_engine.sh int8 --int8-source cache`), labels.txt, preprocess.json,
golden/ (preprocessed inputs, labels, PyTorch fp32 outputs), thresholds.json, bundle.json,
manifest.json (sha256 of every file), lib/ (the runtime code verify.py shares with resnet-edge).
"""


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a bundle, refusing absolute paths, `..`, links that leave the target, special
    files and oversized archives before anything is written. Returns the bundle's root."""
    archive, dest = Path(archive), Path(dest)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BadInput(f"{archive} is not a readable tar archive ({exc})") from None
    with tar:
        members = tar.getmembers()
        if len(members) > MAX_MEMBERS:
            raise BadInput(f"{archive} has {len(members)} members (limit {MAX_MEMBERS}); refusing it")
        total = 0
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute() or ".." in parts:
                raise BadInput(f"{archive} member {m.name!r} points outside the target; refusing the archive")
            if m.issym() or m.islnk():
                link = Path(m.name).parent / m.linkname
                if Path(m.linkname).is_absolute() or ".." in Path(os.path.normpath(link)).parts:
                    raise BadInput(f"{archive} member {m.name!r} links outside the target; refusing the archive")
            elif not (m.isfile() or m.isdir()):
                raise BadInput(f"{archive} member {m.name!r} is a special file; refusing the archive")
            total += m.size
            if total > MAX_EXTRACT_BYTES:
                raise BadInput(f"{archive} unpacks to more than {MAX_EXTRACT_BYTES >> 30} GiB; refusing it")
        roots = {Path(m.name).parts[0] for m in members if Path(m.name).parts}
        if len(roots) != 1:
            raise BadInput(f"{archive} should hold one bundle folder, found {len(roots)} top-level entries")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)
    return dest / roots.pop()
