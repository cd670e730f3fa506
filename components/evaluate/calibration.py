"""Whether the model's probabilities mean what they say: expected calibration error (ECE) and the reliability
diagram's bins, from the predicted class's probability and whether it was right."""

import numpy as np

BINS = 10  # equal-width confidence bins over [0, 1], as in Guo et al. 2017


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
