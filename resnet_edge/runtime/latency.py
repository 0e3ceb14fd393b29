"""Latency: the timing loop (runtime/timing.py) and the machine description reports carry."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess

from ..artifacts import library_versions
from .timing import LatencyStats, measure

__all__ = ["LatencyStats", "measure", "describe_machine"]


def describe_machine() -> dict:
    """CPU, cores, GPU and driver, OS and library versions, as reports record them."""
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "gpu": None, "driver": None, "versions": library_versions()}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
