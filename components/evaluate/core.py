"""Scores the exported SavedModel (the artifact that gets deployed) on the TEST split, or on VALIDATION when
the data has no TEST split: accuracy, AUC, per-class precision and recall, confusion matrix, ROC (2 classes)."""

import heapq
import io
import logging
from dataclasses import dataclass, field

import numpy as np

from components.convert import schema
from components.errors import InputError
from components.model_store import load_saved_model, training_info
from components.train.data import make_dataset, shard_errors

log = logging.getLogger(__name__)

GALLERY_SIZE = 24  # held-out images shown in the report
THUMBNAIL = 96  # pixels on the longer side


def _counts_per_score(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct scores ascending, positives with each, negatives with each): one sort, memory linear in n."""
    distinct, group = np.unique(scores, return_inverse=True)
    pos = np.bincount(group, weights=positives, minlength=len(distinct)).astype(np.int64)
    neg = np.bincount(group, minlength=len(distinct)) - pos
    return distinct, pos, neg


def auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties half),
    counted per distinct score with cumulative sums (O(n log n); a positives x negatives comparison of 50,000
    scores needs gigabytes)."""
    _, pos, neg = _counts_per_score(scores, positives)
    if not pos.sum() or not neg.sum():
        return float("nan")
    negatives_below = np.cumsum(neg) - neg
    above = (pos * negatives_below).sum() + 0.5 * (pos * neg).sum()
    return float(above / (pos.sum() * neg.sum()))


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """(false positive rates, true positive rates, thresholds), one point per distinct score, highest first:
    at threshold t, the share of positives (negatives) scoring >= t."""
    distinct, pos, neg = _counts_per_score(scores, positives)
    tpr = np.cumsum(pos[::-1]) / max(pos.sum(), 1)
    fpr = np.cumsum(neg[::-1]) / max(neg.sum(), 1)
    return fpr.tolist(), tpr.tolist(), distinct[::-1].tolist()


@dataclass(frozen=True)
class Example:
    """One held-out image as the model saw it, with its true and predicted label."""
    true: str
    predicted: str
    confidence: float  # probability of the predicted class
    thumbnail: bytes  # JPEG, at most THUMBNAIL pixels a side

    @property
    def mistake(self) -> bool:
        return self.true != self.predicted


class Gallery:
    """Picks at most `size` examples while the batches stream past, holding at most 2 x size images: the
    mistakes the model was surest of first, then the correct answers it was least sure of."""

    def __init__(self, class_names: list[str], size: int = GALLERY_SIZE):
        self.class_names, self.size = class_names, size
        self.mistakes: list = []  # min-heaps of (priority, seen, pixels, true, predicted, confidence)
        self.correct: list = []
        self.seen = 0

    def add(self, pixels: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
        for image, label, probs in zip(pixels, labels, probabilities):
            predicted = int(probs.argmax())
            confidence = float(probs[predicted])
            heap, priority = (self.mistakes, confidence) if predicted != label else (self.correct, -confidence)
            self.seen += 1
            if len(heap) >= self.size and priority <= heap[0][0]:
                continue
            item = (priority, self.seen, image.clip(0, 255).astype(np.uint8), int(label), predicted, confidence)
            (heapq.heappush if len(heap) < self.size else heapq.heapreplace)(heap, item)

    def examples(self) -> list[Example]:
        picked = sorted(self.mistakes, reverse=True) + sorted(self.correct, reverse=True)
        return [Example(self.class_names[true], self.class_names[predicted], confidence, thumbnail(image))
                for _, _, image, true, predicted, confidence in picked[:self.size]]


def thumbnail(pixels: np.ndarray, size: int = THUMBNAIL) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


@dataclass
class Evaluation:
    split: str
    class_names: list[str]
    examples: int
    accuracy: float
    auc: float  # 2 classes: of the second class's score; more: mean of one-vs-rest AUCs
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    roc: dict[str, list[float]] = field(default_factory=dict)  # 2 classes only: fpr, tpr, thresholds
    gallery: list[Example] = field(default_factory=list)  # a few held-out images, mistakes first

    def per_class(self) -> dict[str, dict[str, float]]:
        matrix = np.array(self.confusion_matrix)
        scores = {}
        for i, name in enumerate(self.class_names):
            predicted, actual = matrix[:, i].sum(), matrix[i, :].sum()
            scores[name] = {
                "precision": float(matrix[i, i] / predicted) if predicted else 0.0,
                "recall": float(matrix[i, i] / actual) if actual else 0.0,
            }
        return scores


def evaluation_split(data_dir: str) -> str:
    for split in ("TEST", "VALIDATION"):
        if schema.split_size(data_dir, split):
            return split
    raise InputError(f"{data_dir} has neither TEST nor VALIDATION records to evaluate on")


class NonFiniteAnswers(InputError):
    """The model answered NaN or infinity: its accuracy would be meaningless."""


def evaluate(model_dir: str, data_dir: str, batch_size: int = 64, gallery_size: int = GALLERY_SIZE,
             loaded=None) -> Evaluation:
    """Runs the exported model's pixel signature over the split, decoded exactly as in training, and keeps
    `gallery_size` of the images for the report. `loaded`: the SavedModel at model_dir, when already loaded."""
    class_names = schema.read_labels(data_dir)
    split = evaluation_split(data_dir)
    image_size = training_info(model_dir)["config"]["image_size"]
    loaded = loaded or load_saved_model(model_dir)
    predict = loaded.signatures["predict_pixels"]
    probabilities, labels = [], []
    gallery = Gallery(class_names, gallery_size)
    with shard_errors(data_dir):  # one pass: nothing to cache
        for pixels, batch_labels in make_dataset(data_dir, split, image_size, batch_size, cache="none"):
            probabilities.append(predict(pixels=pixels)["probabilities"].numpy())
            labels.append(batch_labels.numpy())
            gallery.add(pixels.numpy(), labels[-1], probabilities[-1])
    probabilities, labels = np.concatenate(probabilities), np.concatenate(labels)
    broken = int((~np.isfinite(probabilities).all(axis=1)).sum())
    if broken:  # a diverged model: its accuracy would be meaningless, and NaN must never be deployed
        raise NonFiniteAnswers(f"the model in {model_dir} gives NaN probabilities for {broken} of {len(labels)} "
                               f"{split} images (training diverged); it is not deployable: retrain with a lower "
                               "--learning-rate")
    matrix = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(matrix, (labels, probabilities.argmax(axis=1)), 1)

    one_vs_rest = [auc(probabilities[:, k], labels == k) for k in range(len(class_names))]
    result = Evaluation(
        split, class_names, len(labels), float(np.trace(matrix) / len(labels)),
        one_vs_rest[1] if len(class_names) == 2 else float(np.nanmean(one_vs_rest)), matrix.tolist(),
        gallery=gallery.examples(),
    )
    if len(class_names) == 2:
        fpr, tpr, thresholds = roc_curve(probabilities[:, 1], labels == 1)
        result.roc = {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}
    log.info("%s accuracy %.4f, AUC %.4f on %d examples", split, result.accuracy, result.auc, result.examples)
    return result
