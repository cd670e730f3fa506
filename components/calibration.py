"""Whether the model's probabilities mean what they say, and making them so: expected calibration error (ECE) and
the reliability diagram's bins; temperature scaling (Guo et al. 2017) fitted on VALIDATION; the operating
threshold of a 2-class model. Plain numpy: training fits these, evaluation measures them, both import this.

Temperature scaling divides the logits by T before the softmax. The logits are recovered from the model's
probabilities (log p for a softmax head, equal to the logits up to a per-image constant that the softmax cancels;
the second class's log-odds for a single sigmoid unit, the same thing for K=2), so it works for any architecture
whose head outputs probabilities. Dividing every logit by the same T > 0 keeps their order: the predicted class,
hence accuracy, never changes.
"""

from __future__ import annotations

import numpy as np

BINS = 10  # equal-width confidence bins over [0, 1], as in Guo et al. 2017
# Smallest probability taken to the log: float32 probabilities of an over-confident model are exactly 0 or 1.
EPSILON = 1e-7
# Searched temperatures: 0.05 (sharpen 20x) to 20 (flatten 20x), evenly in log space.
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """{"ece": weighted mean |accuracy - confidence| over the bins, "bins": one dict per bin (lower, upper,
    count, confidence, accuracy; the last two None when empty)}. Confidence: the predicted class's probability."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    rows, ece = [], 0.0
    for b in range(bins):
        count = int(counts[b])
        mean_conf = float(conf_sum[b] / count) if count else None
        accuracy = float(correct_sum[b] / count) if count else None
        if count:
            ece += count / len(labels) * abs(accuracy - mean_conf)
        rows.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count, "confidence": mean_conf,
                     "accuracy": accuracy})
    return {"ece": float(ece), "bins": rows}


def logits(probabilities: np.ndarray) -> np.ndarray:
    """Logits (up to a per-row constant) of [N, K] probabilities: log p, p clipped to [EPSILON, 1]."""
    return np.log(np.clip(probabilities.astype(np.float64), EPSILON, 1.0))


def scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits(p) / T): the probabilities at temperature T (T < 1 sharpens, > 1 flattens). Applying
    1/T to a model's output at T gives back its output before (what evaluation does to show ECE before)."""
    z = logits(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURES minimising the negative log-likelihood of the labels (one pass per T over the
    [N, K] logits: memory linear in N)."""
    z = logits(probabilities)
    rows = np.arange(len(labels))
    best, best_nll = 1.0, np.inf
    for t in TEMPERATURES:
        scaled = z / t
        top = scaled.max(axis=1)
        nll = float(np.mean(top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)) - scaled[rows, labels]))
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def precision_recall_curve(scores: np.ndarray, positives: np.ndarray) -> dict[str, list[float]]:
    """{"thresholds", "precision", "recall"}: one point per distinct score, highest first; at threshold t the
    positive class is predicted for every score >= t."""
    distinct, group = np.unique(scores, return_inverse=True)
    pos = np.bincount(group, weights=positives.astype(np.float64), minlength=len(distinct))[::-1]
    total = np.bincount(group, minlength=len(distinct))[::-1]
    tp, predicted = np.cumsum(pos), np.cumsum(total)
    return {"thresholds": distinct[::-1].tolist(), "precision": (tp / predicted).tolist(),
            "recall": (tp / max(positives.sum(), 1)).tolist()}


def at_threshold(scores: np.ndarray, positives: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision and recall of the positive class when it is predicted for scores >= threshold."""
    predicted = scores >= threshold
    tp = float((predicted & positives).sum())
    return {"precision": tp / predicted.sum() if predicted.sum() else 0.0,
            "recall": tp / positives.sum() if positives.sum() else 0.0}


def choose_threshold(scores: np.ndarray, positives: np.ndarray, target_precision: float = 0.0,
                     target_recall: float = 0.0) -> tuple[float, bool]:
    """(threshold, whether the target was reached). target_precision: the lowest threshold whose precision
    reaches it (the most recall at that precision); target_recall: the highest threshold whose recall reaches it
    (the most precision at that recall). Unreached, the threshold with the best precision (recall) instead.
    The threshold is put halfway (in log-odds) between the score that decides it and the next lower score:
    VALIDATION's answers are the same as at that score, and an image scored a little below it is not cut off (a
    confident model's VALIDATION dogs at 0.99999 put a threshold at the score itself above TEST dogs at 0.9999)."""
    curve = precision_recall_curve(scores, positives)
    thresholds = np.array(curve["thresholds"])
    if target_precision:
        precision = np.array(curve["precision"])
        reached = np.flatnonzero(precision >= target_precision)
        if len(reached):
            return _below(thresholds, reached[-1]), True
        best = len(precision) - 1 - int(np.argmax(precision[::-1]))  # the lowest threshold with the best precision
        return _below(thresholds, best), False
    recall = np.array(curve["recall"])
    reached = np.flatnonzero(recall >= target_recall)
    if len(reached):
        return _below(thresholds, reached[0]), True
    return _below(thresholds, len(thresholds) - 1), False


def _below(thresholds: np.ndarray, at: int) -> float:
    """Halfway in log-odds between thresholds[at] and the next lower score (descending thresholds), as float32
    compares it (the SavedModel's labels output); thresholds[at] itself when no score lies below it or no float32
    lies between the two."""
    if at + 1 >= len(thresholds):
        return float(thresholds[at])
    high, low = np.clip(thresholds[[at, at + 1]].astype(np.float64), EPSILON, 1.0 - EPSILON)
    odds = (np.log(high / (1 - high)) + np.log(low / (1 - low))) / 2
    middle = np.float32(1.0 / (1.0 + np.exp(-odds)))
    if not np.float32(thresholds[at + 1]) < middle <= np.float32(thresholds[at]):
        return float(thresholds[at])
    return float(middle)
