"""Deployment bundles: everything a device needs to build its own engine and prove it still
matches PyTorch, in one tar.gz whose manifest lists every file (and may be signed); and their
safe extraction and verification anywhere.

Making one (bundle.py) needs torch, ONNX and the whole pipeline; `keygen`, `verify` and the
device scripts need none of that, so the package loads it only when one of its names is used
(`keygen` imported torch for 20 s on a loaded runner to write two small key files).
"""

from __future__ import annotations

_FROM_BUNDLE = ("TARGETS", "BundleResult", "BundleError", "make_bundle", "safe_extract", "bundle_files",
                "LIB", "HERE")


def __getattr__(name: str):
    if name not in _FROM_BUNDLE:
        raise AttributeError(name)  # a submodule (signing, archive, ...) is imported as such
    from . import bundle
    return getattr(bundle, name)


__all__ = ["TARGETS", "BundleResult", "BundleError", "make_bundle", "safe_extract", "bundle_files"]
