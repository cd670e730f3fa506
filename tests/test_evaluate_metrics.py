"""Evaluation's AUC and ROC: the same answers as the pairwise definition, in memory linear in the number of scores."""

import tracemalloc

import numpy as np
import pytest

from components.evaluate.core import auc, roc_curve


def pairwise_auc(scores, positives):
    """The definition, over every positive/negative pair (what evaluate/core.py computed before)."""
    pos, neg = scores[positives], scores[~positives]
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))


def threshold_roc(scores, positives):
    """One pass over the scores per threshold (what evaluate/core.py computed before)."""
    thresholds = np.unique(scores)[::-1]
    pos, neg = max(positives.sum(), 1), max((~positives).sum(), 1)
    tpr = [float(((scores >= t) & positives).sum() / pos) for t in thresholds]
    fpr = [float(((scores >= t) & ~positives).sum() / neg) for t in thresholds]
    return fpr, tpr, [float(t) for t in thresholds]


@pytest.mark.parametrize("seed", range(20))
def test_auc_and_roc_agree_with_the_definitions_ties_included(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    # Scores rounded to few values, as a model's float32 sigmoid gives ties; sometimes one class only.
    scores = np.round(rng.random(n), int(rng.integers(1, 4))).astype(np.float32)
    positives = rng.random(n) < rng.choice([0.0, 0.3, 0.5, 1.0])
    expected = pairwise_auc(scores, positives)
    if np.isnan(expected):
        assert np.isnan(auc(scores, positives))
    else:
        assert auc(scores, positives) == pytest.approx(expected, abs=1e-12)
    assert roc_curve(scores, positives) == threshold_roc(scores, positives)


def test_200000_scores_are_evaluated_in_under_200_mb():
    rng = np.random.default_rng(0)
    positives = rng.random(200_000) < 0.5
    scores = np.clip(rng.normal(0.5 + 0.2 * positives, 0.2), 0, 1).astype(np.float32)
    tracemalloc.start()
    try:
        area = auc(scores, positives)
        fpr, tpr, thresholds = roc_curve(scores, positives)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert 0.7 < area < 0.85  # two normal distributions one standard deviation apart: AUC ~0.76
    assert len(fpr) == len(tpr) == len(thresholds) and fpr[-1] == tpr[-1] == 1.0
