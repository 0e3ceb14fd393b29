"""Latency: warm-up, then timed iterations with the device synchronized, as statistics."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..artifacts import library_versions
from .backends import Backend


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    min_ms: float
    images_per_s: float

    @classmethod
    def from_seconds(cls, batch_size: int, seconds) -> "LatencyStats":
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(batch_size, len(ms), float(ms.mean()), float(p50), float(p90), float(p99),
                   float(ms.std()), float(ms.min()), batch_size * 1e3 / float(ms.mean()))

    def to_dict(self) -> dict:
        return asdict(self)


def measure(backend: Backend, batch: np.ndarray, *, iterations: int = 100,
            warmup: int = 10) -> dict:
    """Host-to-host latency of `backend.run`, and, where the backend separates them, device
    compute alone (input already on the device, output left there, synchronized)."""
    for _ in range(warmup):
        backend.run(batch)
    host = []
    clock = time.perf_counter
    for _ in range(iterations):
        start = clock()
        backend.run(batch)
        host.append(clock() - start)
    result = {"host_to_host": LatencyStats.from_seconds(len(batch), host).to_dict(),
              "device_compute": None}
    if backend.separates_device_time:
        staged = backend.stage(batch)
        backend.synchronize()
        for _ in range(warmup):
            backend.execute(staged)
        backend.synchronize()
        device = []
        for _ in range(iterations):
            start = clock()
            backend.execute(staged)
            backend.synchronize()
            device.append(clock() - start)
        result["device_compute"] = LatencyStats.from_seconds(len(batch), device).to_dict()
    return result


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
