"""How far a candidate backend's logits are from the reference's, accumulated batch by batch.

Memory stays flat in the number of images except for one float per image (its max abs error),
which the p99 needs. A NaN or inf in a candidate's logits is counted, makes its image disagree and
its error infinite; it never disappears the way Python's max() drops NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NEAR_TIE_FACTOR = 2  # a reference margin under twice a candidate's p99 logit error can flip
Z_95 = 1.6449  # one-sided 95 %: the bound below which the true agreement lies 1 time in 20


def wilson_lower(successes: int, n: int, z: float = Z_95) -> float:
    """Wilson score lower bound of a binomial proportion: what agreement on n images shows
    at least, rather than what it happened to be."""
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n))


def top1_margin(logits: np.ndarray) -> np.ndarray:
    """Per row, how far the top-1 logit is ahead of the runner-up."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf)
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@dataclass
class LogitComparison:
    """Streaming comparison of candidate logits against reference logits (and labels, if any)."""

    images: int = 0
    max_abs: float = 0.0
    nonfinite: int = 0  # candidate logits that are NaN or inf: each one fails the row
    _abs_sum: float = 0.0
    _elements: int = 0
    _cos_sum: float = 0.0
    _top1_agree: int = 0
    _top5_agree: int = 0
    _per_image_max: list[np.ndarray] = field(default_factory=list)
    _margins: list[np.ndarray] = field(default_factory=list)  # reference top-1 margin per image
    _agrees: list[np.ndarray] = field(default_factory=list)  # top-1 agreement per image

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        cand = np.asarray(cand, dtype=np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"logit shapes differ: reference {ref.shape}, candidate {cand.shape}")
        if not np.isfinite(ref).all():
            raise ValueError("reference logits hold NaN or inf: nothing can be compared with them")
        finite = np.isfinite(cand)
        self.nonfinite += int(finite.size - np.count_nonzero(finite))
        good = finite.reshape(len(cand), -1).all(axis=1)  # a row with a NaN agrees with nothing
        err = np.abs(cand - ref)
        per_image = np.where(good, err.reshape(len(err), -1).max(axis=1, initial=0.0), np.inf)
        self._per_image_max.append(per_image)
        self.max_abs = max(self.max_abs, float(per_image.max(initial=0.0)))  # inf if any NaN
        self._abs_sum += float(np.where(finite, err, np.inf).sum())
        self._elements += err.size
        with np.errstate(invalid="ignore", over="ignore"):  # inf rows are counted, not warned
            norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
            cosine = (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30)
        self._cos_sum += float(np.where(good, cosine, -1.0).sum())
        ref_top1 = ref.argmax(axis=1)
        agrees = (cand.argmax(axis=1) == ref_top1) & good
        self._top1_agree += int(agrees.sum())
        self._agrees.append(agrees)
        self._margins.append(top1_margin(ref))
        k = min(5, ref.shape[1])
        cand_topk = np.argsort(-cand, axis=1)[:, :k]
        # top-5 agreement: the reference's top-1 class is among the candidate's top 5.
        self._top5_agree += int(((cand_topk == ref_top1[:, None]).any(axis=1) & good).sum())
        self.images += len(ref)

    @property
    def mean_abs(self) -> float:
        return self._abs_sum / max(self._elements, 1)

    @property
    def p99_abs(self) -> float:
        if not self._per_image_max:
            return 0.0
        with np.errstate(invalid="ignore"):
            return float(np.percentile(np.concatenate(self._per_image_max), 99))

    @property
    def cosine(self) -> float:
        return self._cos_sum / max(self.images, 1)

    @property
    def top1_agreement(self) -> float:
        return self._top1_agree / max(self.images, 1)

    @property
    def top5_agreement(self) -> float:
        return self._top5_agree / max(self.images, 1)

    def error_histogram(self) -> dict:
        """Images counted by their largest logit error, in bins a fifth of a decade wide from
        1e-9 to 1e4 (exact matches and NaN/inf counted apart): the shape a log-scale plot
        needs, small enough for the JSON report."""
        errors = np.concatenate(self._per_image_max) if self._per_image_max else np.zeros(0)
        finite = errors[np.isfinite(errors)]
        edges = np.logspace(-9, 4, 66)
        counts, _ = np.histogram(np.clip(finite[finite > 0], edges[0], edges[-1]), bins=edges)
        return {"edges": edges.tolist(), "counts": counts.tolist(),
                "exact": int((finite == 0).sum()), "nonfinite": int(errors.size - finite.size)}

    def decisive(self, near_tie: float) -> dict:
        """Top-1 agreement on the images whose reference margin clears `near_tie` (a bound on
        the candidate's logit error): a near-tie flips under any correct model with that much
        error, so it says nothing about the model. Carries the Wilson lower bound."""
        margins = np.concatenate(self._margins) if self._margins else np.zeros(0)
        agrees = np.concatenate(self._agrees) if self._agrees else np.zeros(0, bool)
        keep = margins > near_tie if math.isfinite(near_tie) else np.zeros(len(margins), bool)
        n, k = int(keep.sum()), int(agrees[keep].sum())
        return {"near_tie_margin": near_tie, "near_ties": int(len(margins) - n),
                "images": n, "agree": k, "agreement": k / n if n else None,
                "lower_bound": wilson_lower(k, n)}

    def summary(self, near_tie: float | None = None) -> dict:
        """The comparison's numbers; with `near_tie`, also the decisive agreement, which the
        top-1 agreement gate then judges instead of the raw ratio."""
        out = {"images": self.images, "nonfinite": self.nonfinite, "max_abs": self.max_abs,
               "mean_abs": self.mean_abs,
               "p99_abs": self.p99_abs, "cosine": self.cosine,
               "top1_agreement": self.top1_agreement, "top5_agreement": self.top5_agreement}
        if near_tie is not None:
            out["decisive"] = self.decisive(near_tie)
        return out


@dataclass
class Accuracy:
    """Top-1 / top-5 accuracy against labels, accumulated batch by batch."""

    images: int = 0
    _top1: int = 0
    _top5: int = 0
    _class_images: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _class_top1: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        good = np.isfinite(logits).reshape(len(logits), -1).all(axis=1)  # NaN rows are wrong
        k = min(5, logits.shape[1])
        topk = np.argsort(-logits, axis=1)[:, :k]
        right = (topk[:, 0] == labels) & good
        self._top1 += int(right.sum())
        self._top5 += int(((topk == labels[:, None]).any(axis=1) & good).sum())
        self.images += len(labels)
        size = max(logits.shape[1], len(self._class_images), int(labels.max(initial=-1)) + 1)
        self._class_images = _grow(self._class_images, size) + np.bincount(labels, minlength=size)
        self._class_top1 = _grow(self._class_top1, size) + np.bincount(labels[right], minlength=size)

    def per_class(self) -> list[float | None]:
        """Top-1 of each class, None for a class with no images."""
        return [None if n == 0 else int(c) / int(n)
                for c, n in zip(self._class_top1, self._class_images)]

    @property
    def top1(self) -> float:
        return self._top1 / max(self.images, 1)

    @property
    def top5(self) -> float:
        return self._top5 / max(self.images, 1)


def _grow(counts: np.ndarray, size: int) -> np.ndarray:
    return np.pad(counts, (0, size - len(counts)))
