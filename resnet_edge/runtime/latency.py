"""Latency: the timing loop (runtime/timing.py) and the machine description reports carry."""

from __future__ import annotations

import os
import platform
import re
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
    first line of /etc/nv_tegra_release, as JetPack writes it), the power mode `nvpmodel -q`
    names (as the device says it, not parsed), and whether `jetson_clocks` has locked the clocks
    ("locked", "not locked", or None where `jetson_clocks --show` cannot say: it needs root);
    None elsewhere."""
    release = root / "etc" / "nv_tegra_release"
    if not release.is_file():
        return None
    with open(release, errors="replace") as handle:
        conditions = {"l4t": handle.readline().strip()[:200], "power_mode": None, "clocks": None}
    lines = _said("nvpmodel", "-q")
    conditions["power_mode"] = lines[0][:200] if lines else None
    locked = clocks_locked(_said("jetson_clocks", "--show") or [])
    conditions["clocks"] = None if locked is None else "locked" if locked else "not locked"
    return conditions


def _said(*command: str) -> list[str] | None:
    """A device tool's non-empty output lines, or None where it is missing or fails."""
    if not shutil.which(command[0]):
        return None
    try:
        out = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines if out.returncode == 0 and lines else None


# `jetson_clocks --show` lines, as jetson_stats reads them (jtop/core/jetson_clocks.py, CPU_REGEXP
# and GPU_REGEXP, at fd39316): "cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600
# CurrentFreq=2201600 IdleStates: ..." and "GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=..."
_CPU_CLOCK = re.compile(r"cpu(.+?): Online=(.+?) Governor=(.+?) MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)")
_GPU_CLOCK = re.compile(r"GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)")


def clocks_locked(show: list[str]) -> bool | None:
    """jetson_stats' rule for "jetson_clocks is running" (JetsonClocks.status in the file above):
    every CPU and the GPU at MinFreq == MaxFreq == CurrentFreq; the EMC line is not checked.
    None when the output has no CPU or GPU line to judge (jetson_clocks refused: not root)."""
    checks = []
    for line in show:
        cpu, gpu = _CPU_CLOCK.search(line), _GPU_CLOCK.search(line)
        low, high, now = (cpu.groups()[3:] if cpu else gpu.groups() if gpu else (None,) * 3)
        if low is not None:
            checks += [high == low, high == now]
    return all(checks) if checks else None

