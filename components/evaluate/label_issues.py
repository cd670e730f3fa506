"""Held-out images whose given label the model finds unlikely, confident-learning style (Northcutt et al. 2021,
the rule cleanlab's `find_label_issues` applies by default): each class j has a threshold t_j, the mean
probability of j over the images labelled j; an image labelled y is an issue when p_y < t_y while some other
class k reaches its own t_k. Ranked by self-confidence p_y, lowest (most likely mislabelled) first.

A short implementation rather than cleanlab: it is these few lines of numpy, and cleanlab would bring
scikit-learn and pandas into the serving image's lock for them."""

import csv
import io

import numpy as np

ISSUES_FILE = "label_issues.csv"  # beside the evaluate step's report
FIELDS = ("uri", "given", "predicted", "score")  # its columns; score: the model's probability of the given label


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the suspect images, the least likely given label first."""
    classes = probabilities.shape[1]
    thresholds = np.full(classes, np.inf)  # a class with no images: nothing can be "confidently" it
    for j in range(classes):
        if (labels == j).any():
            thresholds[j] = probabilities[labels == j, j].mean()
    self_confidence = probabilities[np.arange(len(labels)), labels]
    reaches = probabilities >= thresholds  # [n, classes]
    reaches[np.arange(len(labels)), labels] = False
    suspect = (self_confidence < thresholds[labels]) & reaches.any(axis=1)
    indices = np.flatnonzero(suspect)
    return indices[np.argsort(self_confidence[indices], kind="stable")]


def issues_csv(issues) -> str:
    """label_issues.csv's text: a header, then one row per issue (core.LabelIssue), in the order given."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows((i.uri, i.given, i.predicted, f"{i.score:.6f}") for i in issues)
    return out.getvalue()
