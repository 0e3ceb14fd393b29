"""The `resnet-edge` command line: parses options, calls the library, prints, sets exit codes.

One vocabulary across commands: `--data` is the data a command reads (pipeline and calibrate
name both with `--data-calib` / `--data-eval`), `--out` a directory, `--json FILE` the
machine-readable result (`-` for standard output), `--backends`/`--precisions` comma lists of
torch, ort, trt and fp32, fp16, int8, int8-fp16 (`--backend`/`--precision` where a command takes
one), and `--debug`, `--quiet`, `--verbose` work before or after the command name. Every command
ends by listing the files it wrote.
"""

from __future__ import annotations

import os
import tempfile

from . import measure, model, pipeline, quantize, ship  # noqa: F401 (each registers its commands)
from .common import GLOBAL_FLAGS, TARGET_NAMES, cli


def main() -> None:
    # Before ONNX Runtime and torch load: a run sends no ONNX Runtime telemetry (1.29+ sends it
    # from Linux too, and keeps a session file in TMPDIR) unless ORT_DISABLE_TELEMETRY=0 asks
    # for it, and TorchInductor's cache folder, which torch makes when exporting loads its
    # compiler and leaves in TMPDIR, is a scratch one removed at exit unless one is named.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return cli(prog_name="resnet-edge")
    with tempfile.TemporaryDirectory(prefix="resnet-edge-inductor-") as scratch:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = scratch
        return cli(prog_name="resnet-edge")


__all__ = ["cli", "main", "GLOBAL_FLAGS", "TARGET_NAMES"]
