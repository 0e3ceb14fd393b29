"""Latency: the timing loop (runtime/timing.py) and the machine description reports carry."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from ..artifacts import library_versions
from .cpu import cpu_features
from .timing import LatencyStats, measure

__all__ = ["LatencyStats", "measure", "describe_machine"]


def describe_machine() -> dict:
    """CPU (with its int8 features and arithmetic), cores, GPU and driver, OS and library versions, as reports record them."""
    features = cpu_features()
    info = {"cpu": features["model"] or platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "platform": platform.platform(),
            "cpu_features": features["features"], "int8_arithmetic": features["int8_arithmetic"],
            "gpu": None, "driver": None, "versions": library_versions()}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        pass
    jetson = jetson_conditions()
    if jetson:
        info["jetson"] = jetson
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return info


def jetson_conditions(root: Path = Path("/")) -> dict | None:
    """On a Jetson, what decides whether two latencies can be compared: the L4T release (the
    first line of /etc/nv_tegra_release, as JetPack writes it) and the power mode `nvpmodel -q`
    names; None elsewhere. Recorded as the device says them, not parsed."""
    release = root / "etc" / "nv_tegra_release"
    if not release.is_file():
        return None
    with open(release, errors="replace") as handle:
        conditions = {"l4t": handle.readline().strip()[:200], "power_mode": None}
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
            lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            conditions["power_mode"] = lines[0][:200] if out.returncode == 0 and lines else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return conditions

