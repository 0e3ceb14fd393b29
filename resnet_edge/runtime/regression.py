"""Is a latency slower than its baseline's, beyond the noise of either run?

Two medians alone cannot say: on a shared CI machine two runs of one build differ by more than
many real regressions. So the p50 ratio (new over baseline) gets a bootstrap confidence
interval from both sample sets, and a gate of `max_regression_pct` fails only when the whole
interval lies past it, passes when the whole interval lies within it, and is inconclusive in
between, which is the honest answer for runs too noisy to tell (more iterations narrow it).
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
MAX_REGRESSION_PCT = 10.0


MAX_SAMPLES = 10_000  # per run in the bootstrap: an interval from more is no narrower to speak of
_CHUNK = 200  # resamples drawn at a time, so memory stays _CHUNK x MAX_SAMPLES numbers


def p50_ratio_interval(baseline, new, *, resamples: int = RESAMPLES,
                       confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(ratio of the medians, lower and upper end of its `confidence` bootstrap interval),
    resampling each run's samples with replacement; seeded, so a verdict is repeatable. A run
    of more than MAX_SAMPLES samples is bootstrapped from a random MAX_SAMPLES of them, so a
    baseline of millions of samples costs what one of ten thousand does."""
    old, now = np.asarray(baseline, np.float64), np.asarray(new, np.float64)
    if len(old) < 2 or len(now) < 2 or (old <= 0).any() or (now <= 0).any():
        raise ValueError("each run needs at least 2 positive latency samples")
    rng = np.random.default_rng(seed)
    ratios = []
    old_pool, now_pool = _pool(rng, old), _pool(rng, now)
    for start in range(0, resamples, _CHUNK):
        n = min(_CHUNK, resamples - start)
        ratios.append(np.median(rng.choice(now_pool, (n, len(now_pool))), axis=1)
                      / np.median(rng.choice(old_pool, (n, len(old_pool))), axis=1))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(ratios), [tail, 1 - tail])
    return float(np.median(now) / np.median(old)), float(low), float(high)


def _pool(rng, samples: np.ndarray) -> np.ndarray:
    return samples if len(samples) <= MAX_SAMPLES else rng.choice(samples, MAX_SAMPLES, replace=False)


def judge(baseline, new, max_regression_pct: float = MAX_REGRESSION_PCT) -> dict:
    """{"verdict": "regression" | "pass" | "inconclusive", "ratio", "low", "high", "limit"}."""
    ratio, low, high = p50_ratio_interval(baseline, new)
    limit = 1 + max_regression_pct / 100
    verdict = "regression" if low > limit else "pass" if high <= limit else "inconclusive"
    return {"verdict": verdict, "ratio": ratio, "low": low, "high": high, "limit": limit}
