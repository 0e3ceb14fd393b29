"""`bench`: latency per backend x precision x batch size, on seeded inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .backends import BackendUnavailable, artifact_hashes, open_backend
from .latency import describe_machine, measure

SCHEMA = "resnet-edge.bench/1"


def run_bench(workdir: str | Path, pairs: list[tuple[str, str]], batch_sizes: list[int], *,
              iterations: int, warmup: int, device: str = "auto",
              step: Callable[[str], None] = lambda m: None) -> dict:
    from ..parity.run import open_workdir  # parity imports runtime; keep the cycle lazy
    card, model = open_workdir(workdir)
    rng = np.random.default_rng(0)
    results, skipped = [], []
    for name, precision in pairs:
        try:
            backend = open_backend(name, precision, workdir, model=model, device=device)
        except BackendUnavailable as exc:
            skipped.append({"backend": name, "precision": precision, "reason": str(exc)})
            continue
        for size in batch_sizes:
            step(f"{backend.label} batch {size}")
            batch = rng.standard_normal((size, *card.preprocess.input_shape), dtype=np.float32)
            m = measure(backend, batch, iterations=iterations, warmup=warmup)
            results.append({"backend": name, "precision": precision, "device": backend.label, **m})
        backend.close()
    ran = list(dict.fromkeys((r["backend"], r["precision"]) for r in results))
    return {"schema": SCHEMA, "model": card.to_dict(), "artifacts": artifact_hashes(workdir, ran),
            "machine": describe_machine(),
            "iterations": iterations, "warmup": warmup, "results": results, "skipped": skipped}
