"""TensorRT's rules that need no TensorRT: the files each precision builds from, engine records
and what makes an engine unusable elsewhere, the ONNX opset each parser reads, calibration cache
headers, cuda-python against the driver, and where a device writes. Pure functions, tested
without TensorRT; standard library only, so the deploy bundle carries this file in lib/ and a
Jetson applies the same rules.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ENGINE_JSON_SUFFIX = ".json"
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# int8 whose float (non-quantized) parts are fp16: what strongly typed builds want, since they
# take every precision from the file (ModelOpt's high_precision_dtype="fp16")
INT8_FP16_FILE = "model.int8-fp16.onnx"
CACHE_FILE = "calibration.cache"
TIMING_CACHE_FILE = "timing.cache"
# DLA: from 8.5 to 10.7, "the last 10.x release that supported DLA"; 11.0-11.3 have none and
# 11.4 brings it back only on AGX Orin with JetPack 7.2.2, strongly typed (not built here yet).
DLA_VERSIONS = ((8, 5), (10, 7))


class EngineError(Exception):
    """An engine cannot be built or used here; the message says why and what to do."""


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def family(version: str) -> str:
    """The API family a TensorRT version belongs to, as the build plan tells them apart."""
    v = version_tuple(version)
    if v[0] == 8:
        return f"{v[0]}.{v[1]}"
    if v[0] == 10:
        return "10.12+" if v[:2] >= (10, 12) else "10.0-10.11"
    return f"{v[0]}.x"


def max_onnx_opset(tensorrt_version: str) -> int:
    """The newest ONNX opset the release's parser reads (onnx/onnx-tensorrt docs/operators.md:
    8.5 and 8.6 "up to Opset 17", 10.0 "opset 9 to opset 20", 10.15 "opset 9 to opset 24")."""
    v = version_tuple(tensorrt_version)
    if v[0] < 10:
        return 17
    return 24 if v[:2] >= (10, 15) else 20


def opset_problem(onnx_file: str, opset: int | None, tensorrt_version: str) -> str | None:
    """One line, said before a build, when this TensorRT's parser cannot read the file."""
    newest = max_onnx_opset(tensorrt_version)
    if opset is None or opset <= newest:
        return None
    return (f"{onnx_file} is ONNX opset {opset}, and TensorRT {tensorrt_version} reads opset "
            f"<= {newest}; export with --exporter torchscript (opset 17) and bundle that "
            "(JetPack 5: --target jetpack5; JetPack 6.0: --target jetpack6)")


def family_note(target_tensorrt: str | None, here: str) -> str | None:
    """One line when a bundle meant for one TensorRT family is built on another."""
    if not target_tensorrt or family(target_tensorrt) == family(here):
        return None
    return (f"note: this bundle targets TensorRT {target_tensorrt} ({family(target_tensorrt)}); "
            f"this device has {here} ({family(here)}), so the {family(here)} build rules apply")


def gpu_slug(gpu_name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")


def engine_dir(base: str | os.PathLike, gpu_name: str, trt_version: str) -> Path:
    major_minor = ".".join(str(p) for p in version_tuple(trt_version)[:2])
    return Path(base) / "engines" / f"{gpu_slug(gpu_name)}-trt{major_minor}"


def engine_name(precision: str, dla_core: int | None = None) -> str:
    """model.<precision>.engine for the GPU, model.<precision>.dla<N>.engine for DLA core N: a
    DLA build of a precision is another engine (one batch size, other layers), never the GPU's
    written over."""
    return f"model.{precision}{'' if dla_core is None else f'.dla{dla_core}'}.engine"


def engine_path(base, gpu_name: str, trt_version: str, precision: str, dla_core: int | None = None) -> Path:
    return engine_dir(base, gpu_name, trt_version) / engine_name(precision, dla_core)


def incompatibility(meta: dict, trt_version: str, gpu_name: str, compute_capability: str) -> str | None:
    """Why an engine built as `meta` describes cannot run here, or None if it can.

    Engines are tied to the exact TensorRT version and the GPU's compute capability unless built
    version-compatible (same major onward 8->10->11 pairs excepted, which we do not rely on) or
    hardware-compatible (Ampere and newer).
    """
    built = meta.get("tensorrt", "?")
    if not meta.get("version_compatible") and version_tuple(built) != version_tuple(trt_version):
        return (f"engine was built with TensorRT {built}, this machine has {trt_version}; "
                "rebuild it here with `resnet-edge build`")
    if meta.get("version_compatible") and version_tuple(built)[:1] != version_tuple(trt_version)[:1]:
        return (f"version-compatible engine from TensorRT {built} cannot load on {trt_version}; "
                "rebuild it here with `resnet-edge build`")
    level = meta.get("hardware_compatibility", "none")
    cc_built = meta.get("compute_capability", "?")
    if level == "ampere_plus":
        if version_tuple(compute_capability) < (8, 0):
            return (f"engine is Ampere+ compatible but this GPU has compute capability "
                    f"{compute_capability}; rebuild it here with `resnet-edge build`")
    elif cc_built != compute_capability:
        return (f"engine was built for {meta.get('gpu', '?')} (compute capability {cc_built}), "
                f"this GPU is {gpu_name} ({compute_capability}); rebuild it here with "
                "`resnet-edge build`")
    return None


def read_engine_meta(engine: str | os.PathLike) -> dict:
    path = Path(engine).with_suffix(ENGINE_JSON_SUFFIX)
    if not path.exists():
        raise EngineError(f"{path.name} (the engine's build record) is missing; rebuild the engine")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path} is not a readable build record ({exc}); rebuild the engine") from None
    if not isinstance(meta, dict):
        raise EngineError(f"{path} is not a build record; rebuild the engine")
    return meta


def cache_header(tensorrt_version: str, algorithm: str = "EntropyCalibration2") -> str:
    """`TRT-<NV_TENSORRT_VERSION>-<algorithm>`: 8.5.2 -> 8502, 10.3.0 -> 100300."""
    major, minor, patch = (list(version_tuple(tensorrt_version)) + [0, 0])[:3]
    code = major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch
    return f"TRT-{code}-{algorithm}"


def reheader_cache(text: str, tensorrt_version: str) -> str:
    """A calibration cache's first line names the TensorRT version that reads it; TensorRT
    ignores a cache headed for another version (NVIDIA/TensorRT#1378)."""
    _, _, body = text.partition("\n")
    return f"{cache_header(tensorrt_version)}\n{body}"


def cuda_python_problem(installed: str, driver_cuda: int, wanted: str | None = None) -> str | None:
    """Why this cuda-python cannot drive a device whose driver supports CUDA `driver_cuda`
    (cudaDriverGetVersion, e.g. 12060), or None. cuda-python N.x needs a CUDA N driver; a
    bundle's target may ask for a narrower range (`wanted`, as ">=12.6.1,<13")."""
    have = version_tuple(installed)
    driver = (driver_cuda // 1000, driver_cuda % 1000 // 10)
    fix = wanted or f">={driver[0]},<{driver[0] + 1}"
    if have[:1] > driver[:1]:
        return (f"cuda-python {installed} needs a CUDA {have[0]} driver, this device's driver "
                f"supports CUDA {driver[0]}.{driver[1]}; pip install 'cuda-python{fix}'")
    if wanted and not _satisfies(have, wanted):
        return (f"cuda-python {installed} does not match this bundle's CUDA ({wanted}); "
                f"pip install 'cuda-python{wanted}'")
    return None


def _satisfies(version: tuple[int, ...], spec: str) -> bool:
    for clause in spec.split(","):
        op, bound = re.match(r"\s*(>=|<|==)\s*([\d.]+)", clause).groups()
        bound_v = version_tuple(bound)
        padded = version[:len(bound_v)]
        if not {">=": padded >= bound_v, "<": padded < bound_v, "==": padded == bound_v}[op]:
            return False
    return True


def device_dir(bundle: Path) -> Path:
    """Where a device writes engines, caches and reports for a bundle: never inside the bundle
    (whose every file the manifest lists), but beside it, or $RESNET_EDGE_DEVICE_DIR."""
    override = os.environ.get("RESNET_EDGE_DEVICE_DIR")
    bundle = Path(bundle).resolve()
    return Path(override) if override else bundle.parent / f"{bundle.name}.device"


def bundle_info(bundle: Path) -> dict:
    path = Path(bundle) / "bundle.json"
    return json.loads(path.read_text()) if path.exists() else {}
