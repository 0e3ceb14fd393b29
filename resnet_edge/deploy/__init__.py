"""Deployment bundles: everything a device needs to build its own engine and prove it still
matches PyTorch, in one tar.gz whose manifest lists every file (and may be signed); and their
safe extraction and verification anywhere.

Making one (bundle.py) needs torch, ONNX and the whole pipeline; `keygen`, `verify` and the
device scripts need none of that, so the package loads it only when one of its names is used
(`keygen` imported torch for 20 s on a loaded runner to write two small key files).
"""

from __future__ import annotations

def __getattr__(name: str):
    """A name of bundle.py (make_bundle, TARGETS, ...), loaded on first use; a submodule
    (signing, archive, ...) is left to the import system, which loads only it."""
    import importlib.util
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(name)
    from . import bundle
    return getattr(bundle, name)


__all__ = ["TARGETS", "BundleResult", "BundleError", "make_bundle", "safe_extract", "bundle_files"]
