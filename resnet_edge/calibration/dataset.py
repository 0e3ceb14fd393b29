"""Calibration data: a deterministic, class-balanced draw from any data spec, through the
model's own Preprocess."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..data import Preprocess, Source, batches

DEFAULT_SAMPLES = 512  # NVIDIA's advice for CNNs (ModelOpt examples/onnx_ptq)


def balanced_indices(source: Source, samples: int, seed: int = 0) -> list[int]:
    """`samples` indices, round-robin over classes (each class shuffled with `seed`) when the
    source has labels, else a seeded draw. Deterministic for the same source and seed."""
    rng = np.random.default_rng(seed)
    n = min(samples, len(source))
    if not source.has_labels:
        return sorted(rng.permutation(len(source))[:n].tolist())
    by_class = [rng.permutation(np.flatnonzero(source.labels == c)).tolist()
                for c in np.unique(source.labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        chosen += [members[depth] for members in by_class if depth < len(members)][: n - len(chosen)]
        depth += 1
    return sorted(chosen)


def calibration_inputs(source: Source, preprocess: Preprocess, samples: int,
                       seed: int = 0) -> tuple[np.ndarray, dict[str, int]]:
    """(N x C x H x W float32 inputs, images per class) for calibration."""
    indices = balanced_indices(source, samples, seed)
    arrays = [x.numpy() for x, _ in batches(source, preprocess, 64, indices=indices)]
    counts: dict[str, int] = {}
    if source.has_labels:
        names = source.class_names or []
        per_class = Counter(int(source.labels[i]) for i in indices)
        counts = {(names[c] if c < len(names) else str(c)): k for c, k in sorted(per_class.items())}
    return np.concatenate(arrays), counts


def overlaps(calibration_spec: str, evaluation_spec: str) -> bool:
    """True when calibration draws from the very split parity evaluates on."""
    def norm(spec: str) -> str:
        kind, _, arg = spec.partition(":")
        default_split = {"digits": "test", "cifar10": "test"}.get(kind)
        return f"{kind}:{arg or default_split}" if default_split else spec.rstrip("/")
    return norm(calibration_spec) == norm(evaluation_spec)
