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


def p50_ratio_interval(baseline, new, *, resamples: int = RESAMPLES,
                       confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float, float]:
    """(ratio of the medians, lower and upper end of its `confidence` bootstrap interval),
    resampling each run's samples with replacement; seeded, so a verdict is repeatable."""
    old, now = np.asarray(baseline, np.float64), np.asarray(new, np.float64)
    if len(old) < 2 or len(now) < 2 or (old <= 0).any() or (now <= 0).any():
        raise ValueError("each run needs at least 2 positive latency samples")
    rng = np.random.default_rng(seed)
    old_p50 = np.median(rng.choice(old, (resamples, len(old))), axis=1)
    new_p50 = np.median(rng.choice(now, (resamples, len(now))), axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(new_p50 / old_p50, [tail, 1 - tail])
    return float(np.median(now) / np.median(old)), float(low), float(high)


def judge(baseline, new, max_regression_pct: float = MAX_REGRESSION_PCT) -> dict:
    """{"verdict": "regression" | "pass" | "inconclusive", "ratio", "low", "high", "limit"}."""
    ratio, low, high = p50_ratio_interval(baseline, new)
    limit = 1 + max_regression_pct / 100
    verdict = "regression" if low > limit else "pass" if high <= limit else "inconclusive"
    return {"verdict": verdict, "ratio": ratio, "low": low, "high": high, "limit": limit}
