"""Where torch and ONNX Runtime run, and the math modes a GPU adds.

`auto` is resolved in one place, so `RESNET_EDGE_DEVICE=cpu` pins every command and every
library call that was left on `auto` (what a test of CPU behaviour on a GPU machine needs).
TF32 is a math mode, not a precision of its own on the wire: the same fp32 tensors, with
convolutions and matrix products rounded to a 10-bit mantissa on compute capability 8.0 and
newer. `fp32` means IEEE fp32; `tf32` names that mode wherever it runs.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ..errors import BadInput

DEVICE_ENV = "RESNET_EDGE_DEVICE"
DEVICES = ("auto", "cpu", "cuda")
TF32_CAPABILITY = (8, 0)  # Ampere and newer


def cuda_visible() -> bool:
    import torch
    return torch.cuda.is_available()


def pinned_device() -> str:
    """$RESNET_EDGE_DEVICE (auto where unset), or BadInput: checked by every command before its
    work, so a typo is never silently ignored by one that places nothing itself."""
    pinned = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if pinned not in DEVICES:
        raise BadInput(f"${DEVICE_ENV}={pinned!r} is not one of {', '.join(DEVICES)}")
    return pinned


def resolve_device(name: str) -> str:
    """auto -> $RESNET_EDGE_DEVICE where set, else cuda where torch sees a GPU, else cpu;
    cuda without a GPU is bad usage, and so is any other name."""
    if name not in DEVICES:
        raise BadInput(f"device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        name = pinned_device()
    if name == "auto":
        return "cuda" if cuda_visible() else "cpu"
    if name == "cuda" and not cuda_visible():
        raise BadInput("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return name


def placed(device: str) -> str:
    """cpu or cuda for a --device value: auto resolved; an explicit cuda stays cuda even without
    a GPU, so the backend asked for says it is missing (exit 3) rather than bad usage."""
    return resolve_device("auto") if device == "auto" else device


def compute_capability() -> tuple[int, int] | None:
    """GPU 0's compute capability as torch reads it; None without a GPU."""
    import torch
    return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None


def tf32_problem(device: str, capability: tuple[int, int] | None) -> str | None:
    """Why tf32 cannot run on `device` ('cpu' or 'cuda') with a GPU of `capability` (None: no
    GPU), or None where it can."""
    if device != "cuda":
        return ("tf32 is a GPU math mode (NVIDIA compute capability 8.0 or newer); on a CPU "
                "fp32 is all there is")
    if capability is None:
        return "tf32 needs a CUDA GPU; none is visible"
    if tuple(capability) < TF32_CAPABILITY:
        return (f"tf32 needs compute capability 8.0 or newer; this GPU is "
                f"{capability[0]}.{capability[1]}, where fp32 is already what runs")
    return None


def tf32_unavailable(device: str) -> str | None:
    """Why tf32 cannot run on `device` here, or None where it can."""
    return tf32_problem(device, compute_capability() if device == "cuda" else None)


@contextlib.contextmanager
def torch_math(precision: str) -> Iterator[None]:
    """torch's TF32 switches set for `precision` (on for tf32, off otherwise) while the block
    runs, and the caller's own settings put back after: they are process-wide flags."""
    import torch
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
