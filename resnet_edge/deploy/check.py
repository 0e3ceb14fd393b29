"""`resnet-edge verify` and api.verify: a bundle checked from anywhere, as verify.py checks it on
a device, with the bundle's refusals mapped to this tool's exit codes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import BadInput, MissingBackend
from ..runtime.trt_rules import EngineError
from .archive import BundleError, created_bound, safe_extract
from .verify_bundle import NEEDS_KEY, verify as verify_folder


def verify_path(bundle: str | Path, *, key: str | Path | None = None, allow_unsigned: bool = False,
                min_created: str | None = None, precisions: list[str] | None = None,
                backend: str = "auto", iterations: int | None = None, device_dir: str | Path | None = None,
                require_tensorrt: bool = False, step=lambda m: None) -> dict:
    """`resnet-edge verify`: a bundle folder or .tar.gz (extracted safely into a scratch folder,
    its device folder there too unless `device_dir`) checked as verify.py checks it on a device;
    the report verify.json holds. Bad input or a damaged or forged bundle is BadInput, a missing
    TensorRT (with `require_tensorrt`) or one that cannot build MissingBackend."""
    bundle = Path(bundle)
    if bundle.is_dir() and (bundle / "manifest.json").is_file() and not (bundle / "bundle.json").is_file():
        raise BadInput(f"{bundle} is a work directory, not a bundle; make one with "
                       f"`resnet-edge bundle {bundle}` and verify that")
    if key is None and not allow_unsigned:
        raise BadInput(NEEDS_KEY)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            min_created = created_bound(min_created) if min_created is not None else None
            root = bundle
            if bundle.is_file():
                step(f"extracting {bundle}")
                root = safe_extract(bundle, Path(tmp) / "bundle")
            step("verifying")
            return verify_folder(root, precisions=precisions, backend=backend, build=True,
                                 iterations=iterations, key=Path(key) if key else None, step=step,
                                 allow_unsigned=allow_unsigned, min_created=min_created,
                                 device_dir=device_dir or (Path(tmp) / "device" if bundle.is_file() else None),
                                 require_tensorrt=require_tensorrt)
        except BundleError as exc:
            raise (MissingBackend if exc.code == 3 else BadInput)(str(exc)) from None
        except EngineError as exc:  # TensorRT is here but cannot build or load the engine
            raise MissingBackend(str(exc)) from None
