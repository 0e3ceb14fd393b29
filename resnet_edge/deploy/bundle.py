"""Making a deployment bundle: everything a device needs to build its own engine and prove it
still matches PyTorch, in one tar.gz whose manifest lists every file (and may be signed).

Over 400 lines because the steps every bundle shares (which files, golden data and its near-tie
margins, bundle.json, the manifest, signing, the archive) read best as one pass in one place;
what differs per target lives in targets/."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..artifacts import WorkDir, atomic_path, ensure_writable_dir, open_dir, sha256_file
from ..calibration import CACHE_NAME, INT8_NAME
from ..calibration.dataset import balanced_indices
from ..data import batches, data_for, match_classes, open_data
from ..epoch import source_date_epoch
from ..errors import BadInput, GateFailed, MissingBackend
from ..export import FP16_NAME, ONNX_NAME, export_profile, open_workdir
from ..export.metadata import load_onnx, opset_of, quantization_info
from ..parity.gates import MIN_DECISIVE, Thresholds, load_thresholds
from .. import metrics
from ..runtime import ort, trt_plan, trt_rules
from ..backends import TorchBackend, remake_command
from . import serving, signing
from .archive import (IDENTITY, PLAIN_NAME, BundleError, archive_root, manifest_digest, safe_extract,
                      write_archive)
from .targets import TARGETS, Packing, refuse_foreign_options
from .verify_bundle import onnx_file

HERE = Path(__file__).resolve().parent
RUNTIME = HERE.parent / "runtime"
PARITY = HERE.parent / "parity"
LIB = {**{f"{name}.py": RUNTIME / f"{name}.py" for name in ("trt_engine", "trt_plan", "trt_rules",
                                                            "trt_runner", "timing", "cpu")},
       "ort.py": RUNTIME / "ort.py", "gates.py": PARITY / "gates.py", "metrics.py": HERE.parent / "metrics.py",
       "archive.py": HERE / "archive.py", "signing.py": HERE / "signing.py",
       "serving.py": HERE / "serving.py",
       "strictjson.py": HERE.parent / "strictjson.py", "outputs.py": HERE.parent / "outputs.py"}


@dataclass
class BundleResult:
    path: Path
    manifest_sha256: str
    key_id: str | None = None
    precisions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def bundle_files(workdir: Path, target: str) -> tuple[list[str], list[str], list[str]]:
    """(files, precisions, notes): which ONNX files and caches `target` needs from `workdir`,
    each one vouched for (made by a completed run from what is in the work dir now)."""
    spec = TARGETS[target]
    wd = open_dir(workdir)

    def vouched(name: str) -> bool:
        if not wd.file(name).exists():
            return False
        wd.vouch(name, remake_command(workdir, name))
        return True
    files, precisions, notes = [ONNX_NAME], ["fp32"], []
    vouched(ONNX_NAME)
    if vouched(FP16_NAME):
        files.append(FP16_NAME)
        precisions.append("fp16")
    if not wd.file(INT8_NAME).exists():
        notes.append(f"int8 left out: {workdir} is not calibrated; run `resnet-edge calibrate "
                     f"{workdir} --data <calibration images>` first to ship int8")
    elif vouched(INT8_NAME):
        recipe = quantization_info(workdir / INT8_NAME).get("recipe")
        int8_file = trt_plan.build_plan(spec.tensorrt, "int8").onnx_file
        if recipe != "tensorrt":
            notes.append(f"int8 left out: {INT8_NAME} was calibrated with --recipe {recipe} "
                         "(uint8, asymmetric), which TensorRT cannot build; recalibrate with "
                         "--recipe tensorrt to ship int8")
        elif not vouched(int8_file):
            raise BadInput(f"{target} builds int8 from {int8_file}, which {workdir} lacks; run "
                           f"`resnet-edge calibrate {workdir}` again to make it")
        else:
            files += sorted({INT8_NAME, int8_file})
            precisions.append("int8")
            cache_usable = trt_rules.version_tuple(spec.tensorrt)[0] < 11
            if cache_usable and vouched(CACHE_NAME):
                files.append(CACHE_NAME)
    return files, precisions, notes


def onnx_facts(workdir: Path, files: list[str]):
    """One read of each ONNX file a bundle packs: {name: opset}, {name: the external-data files
    it keeps weights in}, and model.onnx's graph (its tensor names and shapes)."""
    opsets, sides, main = {}, {}, None
    for name in (n for n in files if n.endswith(".onnx")):
        model = load_onnx(workdir / name, weights=False)
        opsets[name], sides[name] = opset_of(model), external_data_files(workdir, name, model.graph)
        main = model.graph if name == ONNX_NAME else main
    return opsets, sides, main


def external_data_files(workdir: Path, name: str, graph) -> list[str]:
    """The files `name` (whose `graph` this is) keeps its weights in (ONNX external data),
    relative to the work dir: they travel with it. One outside the work dir (an absolute
    location, '..', a link that leaves) is refused, never followed."""
    tensors = [*graph.initializer, *(a.t for node in graph.node for a in node.attribute if a.HasField("t"))]
    locations = {entry.value for tensor in tensors if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    root = workdir.resolve()
    for location in sorted(locations):
        target = (workdir / location).resolve()
        if Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(root):
            raise BadInput(f"{name} keeps weights in {location!r}, outside {workdir}; only files "
                           "inside the work dir are bundled: export the model again")
        if not target.is_file():
            raise BadInput(f"{name} keeps weights in {location!r}, which {workdir} lacks; export "
                           "the model again")
    return sorted(Path(location).as_posix() for location in locations)


def make_bundle(workdir: str | Path, target: str, out: str | Path | None = None, *,
                eval_spec: str | None = None, golden: int = 100,
                thresholds: dict[str, Thresholds] | None = None,
                sign: str | Path | None = None, accelerator: str = "none",
                classifier_threshold: float = 0.0, release: str | None = None,
                step=lambda m: None) -> BundleResult:
    """The bundle's batch profile is the model's, from its export record. `accelerator`
    (triton only): ONNX Runtime's TensorRT execution accelerator in fp16 or int8;
    `classifier_threshold` (deepstream only): nvinfer's. `release` (e.g. v9) goes with the
    bundle's name, target and time into the signed manifest."""
    if target not in TARGETS:
        raise BadInput(f"unknown --target {target!r}; use {', '.join(TARGETS)}")
    spec = TARGETS[target]
    options = {"triton_accelerator": accelerator, "classifier_threshold": classifier_threshold}
    refuse_foreign_options(spec, options, TARGETS)
    options = {k: v for k, v in options.items() if k in spec.takes}
    if golden < 1:
        raise BadInput(f"--golden must be at least 1, got {golden}")
    if release is not None and not PLAIN_NAME.fullmatch(release):
        raise BadInput(f"--release {release!r} is not a plain name (letters, digits and . _ + -, "
                       "up to 128)")
    if sign is not None:  # a bad key fails before any work
        try:
            signing.sign(b"", sign)
        except signing.SignatureError as exc:
            raise (MissingBackend if exc.code == 3 else BadInput)(str(exc)) from None
    wd = open_dir(workdir)  # once: its manifest read and each file hashed once, handed down
    workdir = wd.path
    card, model = open_workdir(wd)
    profile = export_profile(wd)
    files, precisions, notes = bundle_files(wd, target)
    opsets, sides, graph = onnx_facts(workdir, files)
    files = files + sorted({side for found in sides.values() for side in found})
    for name, opset in opsets.items():
        if opset > spec.max_opset:
            raise BadInput(f"{target} ({spec.about}) reads ONNX opset <= {spec.max_opset}, but "
                           f"{name} is opset {opset}; export with --exporter "
                           "torchscript (opset 17) into a new work dir, calibrate it, and bundle that")
    spec.check_model(card, str(workdir))  # said before any work: what the target can serve
    spec.check_options(options, precisions, workdir)
    out = Path(out) if out else workdir / f"{workdir.name}-{target}.tar.gz"
    root_name = archive_root(out).name
    names = card.class_names or [str(i) for i in range(card.num_classes)]
    output_name = graph.output[0].name
    problems = serving.name_problems(root_name, names, spec.serve, output_name)
    if problems:
        raise BadInput(problems[0])
    ensure_writable_dir(out.parent)

    eval_spec = data_for(card, "test", eval_spec, "--data")
    source = open_data(eval_spec, input_shape=card.preprocess.input_shape)
    match_classes(source, card.num_classes, card.class_names, f"the model ({card.arch})")
    created = creation_time(wd, files)
    created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / root_name
        (stage / "golden").mkdir(parents=True)
        (stage / "lib").mkdir()
        step("writing golden inputs and PyTorch fp32 reference outputs")
        indices = balanced_indices(source, golden)
        if len(indices) < MIN_DECISIVE:  # said before any inference
            raise BadInput(_too_few_golden(len(indices), golden, eval_spec))
        golden_note = _few_golden(len(indices), golden, eval_spec)
        inputs, labels = [], []
        for x, y in batches(source, card.preprocess, 64, indices=indices):
            inputs.append(x.numpy())
            labels.append(y.numpy())
        golden_inputs = np.concatenate(inputs)
        reference = TorchBackend(model)
        golden_outputs = np.concatenate([reference.run(golden_inputs[i:i + 64])
                                         for i in range(0, len(golden_inputs), 64)])
        if not np.isfinite(golden_outputs).all():
            raise GateFailed("the PyTorch fp32 reference gives NaN or inf logits on the golden "
                             "inputs: the model is broken, so nothing was bundled")
        np.save(stage / "golden" / "inputs.npy", golden_inputs)
        np.save(stage / "golden" / "reference.npy", golden_outputs)
        if source.has_labels:
            np.save(stage / "golden" / "labels.npy", np.concatenate(labels).astype(np.int64))

        step("measuring each precision's logit error on the golden inputs (ONNX Runtime)")
        near_tie, decisive = near_tie_margins(workdir, spec.tensorrt, precisions, golden_inputs,
                                              golden_outputs, (profile["min"], profile["max"]))
        short = {p: n for p, n in decisive.items() if n < MIN_DECISIVE}
        if short:
            precision, n = min(short.items(), key=lambda item: item[1])
            raise BadInput(f"only {n} of the {len(golden_inputs)} golden images are decisive for "
                           f"{precision} (the rest are near-ties, which verify sets aside), fewer "
                           f"than the {MIN_DECISIVE} its agreement gate needs to pass; give --golden "
                           f"{len(golden_inputs) * MIN_DECISIVE // max(n, 1) + 10} or more")

        step(f"collecting the files {spec.about} needs")
        for name in files:
            if name == CACHE_NAME:  # headed for the target's TensorRT; devices re-head it
                text = (workdir / name).read_text()
                (stage / name).write_text(trt_rules.reheader_cache(text, spec.tensorrt))
            else:
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(workdir / name, stage / name)
        for name, src in LIB.items():
            shutil.copy2(src, stage / "lib" / name)
        shutil.copy2(HERE / "verify_bundle.py", stage / "verify.py")
        shutil.copy2(HERE / "build_engine.sh", stage / "build_engine.sh")
        os.chmod(stage / "verify.py", 0o755)
        os.chmod(stage / "build_engine.sh", 0o755)
        (stage / "labels.txt").write_text("\n".join(names) + "\n")
        (stage / "preprocess.json").write_text(json.dumps(card.preprocess.to_dict(), indent=2) + "\n")
        serve = spec.add_files(Packing(stage, root_name, workdir, card, profile, names, precisions,
                                       files, graph, sides, options))
        gates = thresholds or load_thresholds()
        (stage / "thresholds.json").write_text(json.dumps({p: vars(t) for p, t in gates.items()}, indent=2) + "\n")
        info = {"schema": "resnet-edge.bundle/2", "target": target, "about": spec.about,
                "tensorrt": spec.tensorrt, "cuda_python": spec.cuda_python,
                "arch": card.arch, "num_classes": card.num_classes, "input_name": "input",
                "input_shape": list(card.preprocess.input_shape), "min_batch": profile["min"],
                "opt_batch": profile["opt"], "max_batch": profile["max"],
                "static_batch": profile["static"], "precisions": precisions,
                "int8_recipe": "tensorrt" if "int8" in precisions else None,
                "golden_data": eval_spec, "near_tie": near_tie,
                "opsets": opsets,
                "resnet_edge": __version__, "left_out": notes,
                "serve": serve,
                "made_from": {name: wd.sha256(name) for name in files},
                "created": created_at,
                "build_plans": {p: vars(trt_plan.build_plan(spec.tensorrt, p)) for p in precisions}}
        (stage / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        (stage / "README.md").write_text(_readme(stage, root_name, card.arch, target, precisions,
                                                 files, profile["opt"])
                                         + spec.readme(root_name, serve))
        manifest = {"schema": "resnet-edge.manifest/1", IDENTITY: {
            "name": root_name, "target": target, "release": release,
            "created": created_at}, "files": {
            p.relative_to(stage).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(stage.rglob("*")) if p.is_file()}}
        manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
        signature = signing.sign(manifest_bytes, sign) if sign is not None else None

        step(f"writing {out}")
        with atomic_path(out) as tmp_tar:
            write_archive(stage, tmp_tar, root_name, manifest_bytes, signature, created)
    key = signing.read_signature(signature)["key_id"] if signature else None
    return BundleResult(out, manifest_digest(manifest_bytes), key, precisions,
                        notes + ([golden_note] if golden_note else []))


def creation_time(workdir: WorkDir, files: list[str]) -> int:
    """The bundle's time, in seconds since the epoch: $SOURCE_DATE_EPOCH where set (the
    reproducible-builds convention), else when the newest file it packs was made. Not the
    clock: the same inputs give the same bytes, so a signed bundle can be rebuilt and compared."""
    from datetime import datetime
    epoch = source_date_epoch()
    if epoch is not None:
        return epoch
    times, records = [], workdir.manifest["files"]
    for name in filter(records.__contains__, files):  # external data has its model's record
        made = records[name].get("created")
        try:
            times.append(int(datetime.fromisoformat(made).timestamp()))
        except (TypeError, ValueError):
            return int(time.time())  # a record without its time: now is all there is to say
    return max(times, default=int(time.time()))


def near_tie_margins(workdir: Path, tensorrt: str, precisions: list[str], inputs: np.ndarray,
                     reference: np.ndarray, batch_range: tuple[int, int]
                     ) -> tuple[dict[str, float], dict[str, int]]:
    """Per precision, the reference top-1 margin below which an image is a near-tie: twice
    the p99 of the largest logit error that precision's ONNX file (the one verify's ONNX
    Runtime fallback runs; int8 as TensorRT reads it) makes on these very inputs. verify sets
    such images aside, so a correct model is never failed by one, on any machine. Also, per
    precision, how many golden images are left to decide its agreement gate."""
    margins, decisive = {}, {}
    for precision in precisions:
        name = onnx_file({"tensorrt": tensorrt}, precision)
        session = ort.make_session(workdir / name, disable_qdq_fusion=precision == "int8")
        input_name = session.get_inputs()[0].name
        comparison = metrics.LogitComparison()
        step = batch_range[1]
        for start in range(0, len(inputs), step):
            comparison.update(reference[start:start + step],
                              ort.run_batch(session, input_name, inputs[start:start + step], batch_range))
        if comparison.nonfinite:
            raise GateFailed(f"{name} gives {comparison.nonfinite} NaN or inf logits on the golden "
                             f"inputs: {precision} is broken, so nothing was bundled")
        margins[precision] = metrics.NEAR_TIE_FACTOR * comparison.p99_abs
        decisive[precision] = comparison.decisive(margins[precision])["images"]
    return margins, decisive


SOUND_GOLDEN = 64  # below this, near-ties can leave fewer than MIN_DECISIVE images to decide on


def _few_golden(packed: int, asked: int, spec: str) -> str | None:
    """What to say of a golden set smaller than asked for, or under SOUND_GOLDEN."""
    if packed < asked:
        said = f"{spec} has only {packed} images: the bundle holds {packed} golden images, not --golden {asked}"
    elif packed < SOUND_GOLDEN:
        said = f"--golden {packed}"
    else:
        return None
    if packed < SOUND_GOLDEN:
        said += (f"; under {SOUND_GOLDEN}, near-ties may leave verify's agreement gate fewer than "
                 f"{MIN_DECISIVE} decisive images to pass on")
    return said


def _too_few_golden(packed: int, asked: int, spec: str) -> str:
    """A golden set verify could never pass: its agreement gate needs MIN_DECISIVE decisive images."""
    where = f"{spec} has only {packed} images" if packed < asked else f"--golden {asked}"
    return (f"{where}, and verify's agreement gate needs at least {MIN_DECISIVE} decisive golden "
            "images to pass, so this bundle could never pass verify; give --golden 64 or more "
            "(and --data with as many images)")


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _readme(stage: Path, root: str, arch: str, target: str, precisions: list[str],
            files: list[str], opt_batch: int) -> str:
    spec = TARGETS[target]
    if spec.cuda_python:
        pip = f"pip install 'cuda-python{spec.cuda_python}'   # matches this target's CUDA"
    else:
        pip = ("pip install 'cuda-python>=12,<13'   # CUDA 12 driver (nvidia-smi says which)\n"
               "pip install 'cuda-python>=13,<14'   # CUDA 13 driver")
    cache = ""
    if CACHE_NAME in files:
        weak = " --typing weak" if trt_plan.build_plan(spec.tensorrt, "int8").strongly_typed else ""
        cache = (f"\nImplicit INT8 from calibration.cache instead of the Q/DQ model "
                 f"(TensorRT <= 10):\n\n```\n./build_engine.sh int8 --int8-source cache{weak}\n```\n")
    dla = ("\nOn the DLA (Xavier/Orin; fp16 or int8, int8 from the cache). A DLA engine runs one "
           f"batch size, this bundle's opt batch ({opt_batch}), and verify.py runs it at that batch; "
           "it is model.<precision>.dla<N>.engine, beside the GPU's engine, not over it:"
           "\n\n```\n./build_engine.sh int8 --dla-core 0 --gpu-fallback\npython3 verify.py --dla-core 0"
           "\n```\n") if spec.jetson else ""
    python = "JetPack's own Python and TensorRT" if spec.jetson else "Python, numpy and TensorRT"
    versions = [ort.model_versions(stage / name) for name in files if name.endswith(".onnx")]
    ir, opset = max(v[0] for v in versions), max(v[1] or 0 for v in versions)
    floor = (f"Needs Python 3.8 or newer, numpy 1.17.4 or newer and, for a signed bundle, cryptography "
             f"2.8 or newer (JetPack 5's apt packages); without TensorRT, onnxruntime "
             f"{ort.oldest_reading(ir, opset) or 'newer than 1.23'} or newer (these files are ONNX IR "
             f"{ir}, opset {opset}).")
    sizes = ", ".join(f"{name} {_megabytes(stage / name)}" for name in files if name.endswith(".onnx"))
    return f"""# {root}

{arch} for {spec.about}, made by resnet-edge {__version__}. Precisions: {', '.join(precisions)}.
Models: {sizes} (int8 files hold their weights in int8).

On the device, with {python}. {floor}

```
{pip}
./build_engine.sh int8         # trtexec with the flags this TensorRT needs (or the Python builder)
python3 verify.py --key ci.pub # the signature, every file against manifest.json, golden inputs vs PyTorch, gates, latency
```

verify.py needs the signer's public key (`--key`, or RESNET_EDGE_VERIFY_KEY set once on the
device); `--allow-unsigned` checks the files only and says that nothing was authenticated.
{cache}{dla}
Engines, caches and verify.json go to `{root}.device/` beside this folder (or
$RESNET_EDGE_DEVICE_DIR), never into the bundle: every file here is listed in manifest.json, and
verify.py refuses anything unlisted. An engine is loaded only when its record says it was built
on this GPU and TensorRT from the ONNX file whose sha256 manifest.json holds.

Signed bundles: `bundle --sign` adds manifest.sig, over the files and this bundle's name,
target, release and time. A verify.py inside a bundle cannot vouch for its own bundle, so check
a new bundle with a copy you already trust, and your public key (`--min-created` refuses one
older than the bundle the device runs):

```
python3 /opt/trusted/verify.py --bundle {root}.tar.gz --key ci.pub    # or: resnet-edge verify ... --key ci.pub
```

`verify.py` exits 0 when every gate in thresholds.json holds, 1 when one fails, 2 when a file is
damaged, unlisted or the signature does not hold, 3 when TensorRT or a matching cuda-python is
missing. Without TensorRT it checks the ONNX files with ONNX Runtime instead and says that no
engine was tested (`--require-tensorrt` makes that exit 3).

Files: model*.onnx (the ONNX files this TensorRT needs), calibration.cache (where TensorRT <= 10
reads it), labels.txt, preprocess.json, golden/ (preprocessed inputs, labels, PyTorch fp32
outputs), thresholds.json, bundle.json, manifest.json (sha256 of every file), lib/ (the runtime
code verify.py shares with resnet-edge).
"""


