"""Latency statistics and the timing loop. Free of torch and of this package's other modules:
the deploy bundle copies this file next to verify.py, so the Jetson check times engines exactly
as `resnet-edge bench` does."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np


MAX_SAMPLES = 10_000


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
    images_per_s: float  # from the p50 latency, which a few slow iterations do not move
    images_per_s_mean: float  # from the mean, for comparison with tools that report that
    images_per_s_from: str = "p50"
    # every iteration's time (the first MAX_SAMPLES): what a later run is compared with,
    # noise and all (regression.judge), where two medians alone cannot tell noise from change
    samples_ms: tuple[float, ...] = ()

    @classmethod
    def from_seconds(cls, batch_size: int, seconds) -> "LatencyStats":
        """Statistics of per-iteration times; `batch_size` is the batch those iterations ran."""
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(batch_size, len(ms), float(ms.mean()), float(p50), float(p90), float(p99),
                   float(ms.std()), float(ms.min()), batch_size * 1e3 / float(p50),
                   batch_size * 1e3 / float(ms.mean()),
                   samples_ms=tuple(round(float(v), 4) for v in ms[:MAX_SAMPLES]))

    def to_dict(self) -> dict:
        return {**asdict(self), "samples_ms": list(self.samples_ms)}


# the warm-up goes on past `warmup` runs while the runs still get faster (the median of the last
# SETTLE_WINDOW runs more than SETTLE_GAIN below the window before it), for at most SETTLE_MAX_S:
# the first backend a bench measured ran on a machine still spinning up (clocks, thread pools,
# page faults) and read up to 1.5x slower than the same backend measured later
SETTLE_WINDOW, SETTLE_GAIN, SETTLE_MAX_S = 5, 0.05, 2.0


def settle(run, warmup: int, clock=time.perf_counter) -> int:
    """Run `run` `warmup` times, then on until it stops getting faster; returns the runs made."""
    times = []
    began = clock()
    while True:
        start = clock()
        run()
        times.append(clock() - start)
        if len(times) < max(warmup, 2 * SETTLE_WINDOW):
            continue
        last, before = (np.median(times[-SETTLE_WINDOW:]),
                        np.median(times[-2 * SETTLE_WINDOW:-SETTLE_WINDOW]))
        if last >= before * (1 - SETTLE_GAIN) or clock() - began > SETTLE_MAX_S:
            return len(times)


def measure(backend, batch: np.ndarray, *, iterations: int = 100,
            warmup: int = 10, clock=time.perf_counter) -> dict:
    """Host-to-host latency of `backend.run`, and, where the backend separates them, device
    compute alone (input already on the device, output left there, synchronized). The warm-up
    is at least `warmup` runs and goes on until the runs stop getting faster (`settle`);
    `warmup=0` times from the first run.

    `backend` is anything with run(batch), and, where `separates_device_time` is true,
    stage(batch), execute(staged) and synchronize()."""
    if warmup:
        settle(lambda: backend.run(batch), warmup, clock)
    host = []
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
