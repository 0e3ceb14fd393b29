"""Top-1 agreement that a near-tie cannot fail and a real error cannot pass: near-ties set aside
by the candidate's own error bound, the rest judged by the Wilson lower bound."""

import numpy as np
import pytest

from resnet_edge.metrics import LogitComparison, top1_margin, wilson_lower
from resnet_edge.parity.gates import MIN_DECISIVE, Thresholds, evaluate_gates

INT8 = Thresholds(min_top1_agreement_pct=95.0)


def test_wilson_lower_bound_matches_the_formula_and_grows_with_evidence():
    # 64/64 at one-sided 95 %: n / (n + z^2)
    assert wilson_lower(64, 64) == pytest.approx(64 / (64 + 1.6449 ** 2), rel=1e-6)
    assert wilson_lower(0, 0) == 0.0 and wilson_lower(0, 10) == 0.0
    assert wilson_lower(8, 8) < 0.95 < wilson_lower(64, 64)  # 8 images show too little
    assert wilson_lower(99, 100) > 0.95 > wilson_lower(98, 100)


def _logits(rng, n, classes=10):
    """Reference logits with margins spread as a trained model's are."""
    ref = rng.normal(0, 1, (n, classes))
    ref[np.arange(n), rng.integers(0, classes, n)] += rng.uniform(0.5, 6, n)
    return ref


def _gate(ref, cand, near_tie=None):
    comparison = LogitComparison()
    comparison.update(ref, cand)
    summary = comparison.summary(near_tie=near_tie)
    return next(g for g in evaluate_gates(INT8, summary, None, None) if g.gate == "top1_agreement_pct")


def test_a_near_tie_flipped_by_a_correct_models_error_fails_raw_agreement_not_decisive():
    rng = np.random.default_rng(0)
    ref = _logits(rng, 64)
    ref[5, :2] = [3.0, 3.0 - 9.25e-5]  # the golden image of the 64 px failure: margin 9.25e-5
    ref[5, 2:] = 0
    cand = ref + rng.normal(0, 0.05, ref.shape)  # int8-sized error, p99 about 0.15
    cand[5, :2] = [2.9, 3.0]  # ...which flips the near-tie
    eight = slice(0, 8)
    assert not _gate(ref[eight], cand[eight]).passed  # one flip in 8 fails the raw ratio
    comparison = LogitComparison()
    comparison.update(ref, cand)
    bound = 2 * comparison.p99_abs
    gate = _gate(ref, cand, near_tie=bound)
    assert gate.passed and "near-ties set aside" in gate.note
    assert comparison.decisive(bound)["near_ties"] >= 1
    assert top1_margin(ref)[5] == pytest.approx(9.25e-5, rel=1e-3)


@pytest.mark.parametrize("disagree,expect_pass", [(0.0, True), (0.20, False)])
def test_decisive_gate_rates_over_many_draws(disagree, expect_pass):
    """100 golden images, 200 draws: a correct model (all disagreement in near-ties) always
    passes; one that disagrees on 20 % of images fails every time, though 8 images of the raw
    ratio would pass it about 1 time in 6."""
    rng = np.random.default_rng(1)
    outcomes = []
    for _ in range(200):
        ref = _logits(rng, 100)
        cand = ref + rng.normal(0, 0.05, ref.shape)
        wrong = rng.random(100) < disagree
        cand[wrong] = np.roll(cand[wrong], 1, axis=1) * 5  # a real error: another answer
        comparison = LogitComparison()
        comparison.update(ref, ref + rng.normal(0, 0.05, ref.shape))  # the bound a bundle measured
        outcomes.append(_gate(ref, cand, near_tie=2 * comparison.p99_abs).passed)
    assert all(outcomes) if expect_pass else not any(outcomes)


def test_few_decisive_images_cannot_pass_on_a_perfect_score():
    rng = np.random.default_rng(2)
    ref = _logits(rng, MIN_DECISIVE - 1)
    gate = _gate(ref, ref, near_tie=0.0)
    assert not gate.passed and "add golden images" in gate.note
    ref = _logits(rng, MIN_DECISIVE)
    assert _gate(ref, ref, near_tie=0.0).passed


def test_a_100_pct_gate_passes_a_perfect_score_and_fails_one_decisive_flip():
    rng = np.random.default_rng(3)
    ref = _logits(rng, 100)
    fp32 = Thresholds(min_top1_agreement_pct=100.0)
    comparison = LogitComparison()
    comparison.update(ref, ref + 1e-7)
    gate = evaluate_gates(fp32, comparison.summary(near_tie=1e-6), None, None)[1]
    assert gate.passed
    cand = ref.copy()
    cand[0] = np.roll(cand[0], 1)
    comparison = LogitComparison()
    comparison.update(ref, cand)
    assert not evaluate_gates(fp32, comparison.summary(near_tie=1e-6), None, None)[1].passed
