"""Scores the exported SavedModel (the artifact that gets deployed) on the TEST split, or on VALIDATION when
the data has no TEST split: accuracy, AUC, per-class precision and recall, confusion matrix, ROC (2 classes),
calibration (ECE, reliability bins) and the images whose given label the model finds least likely."""

import heapq
import io
import logging
from dataclasses import dataclass, field

import numpy as np

from components.convert import schema
from components.errors import InputError
from components.evaluate.calibration import at_threshold, precision_recall_curve, reliability, scale
from components.evaluate.label_issues import find_label_issues
from components.evaluate.saliency import SALIENCY_IMAGES
from components.model_store import load_saved_model, training_info
from components.train.data import make_dataset, record_files, shard_errors

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
    saliency: bytes = b""  # JPEG of the same size: where the model looked for its prediction (saliency.py)

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

    def examples(self, predict=None, saliency_images: int = 0) -> tuple[list[Example], dict]:
        """The picked examples, the first `saliency_images` with a saliency overlay from `predict` (the pixel
        signature), and what that cost: {"images", "seconds"}, or {"skipped": why}."""
        import time

        from components.evaluate.saliency import integrated_gradients, overlay

        picked = (sorted(self.mistakes, reverse=True) + sorted(self.correct, reverse=True))[:self.size]
        explained, report = [], {"images": 0, "seconds": 0.0}
        count = min(saliency_images, len(picked))
        if predict is not None and count:
            started = time.monotonic()
            images = np.stack([item[2] for item in picked[:count]]).astype(np.float32)
            try:
                maps = integrated_gradients(predict, images, np.array([item[4] for item in picked[:count]]))
                explained = [overlay(image, m, THUMBNAIL) for image, m in zip(images, maps)]
                report = {"images": count, "seconds": round(time.monotonic() - started, 2)}
            except (ValueError, LookupError) as e:  # LookupError: TensorFlow has no gradient for an op
                report = {"skipped": str(e)}
                log.warning("saliency skipped: %s", e)
        return [Example(self.class_names[true], self.class_names[predicted], confidence, thumbnail(image),
                        explained[i] if i < len(explained) else b"")
                for i, (_, _, image, true, predicted, confidence) in enumerate(picked)], report


class LeastLikelyLabels:
    """Keeps the `size` images whose given label has the lowest probability while the batches stream past: the
    label-issue gallery's candidates (which of them are issues is known only once every image is scored)."""

    def __init__(self, size: int = GALLERY_SIZE):
        self.size, self.heap, self.seen = size, [], 0  # min-heap of (-p(given), index, pixels, label, predicted)

    def add(self, pixels: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
        for image, label, probs in zip(pixels, labels, probabilities):
            priority = -float(probs[label])
            self.seen += 1
            if len(self.heap) >= self.size and priority <= self.heap[0][0]:
                continue
            item = (priority, self.seen - 1, image.clip(0, 255).astype(np.uint8), int(label), int(probs.argmax()))
            (heapq.heappush if len(self.heap) < self.size else heapq.heapreplace)(self.heap, item)


@dataclass(frozen=True)
class LabelIssue:
    """One row of label_issues.csv: an image whose given label the model finds unlikely."""
    uri: str
    given: str
    predicted: str
    score: float  # the model's probability of the given label


def record_uris(data_dir: str, split: str, wanted: set[int]) -> dict[int, tuple[str, int]]:
    """{index: (uri, label)} of the wanted records, counted in make_dataset's order (the same shards, the same
    deterministic interleave), reading only the uri and label features: no image is decoded. TFRecorder's
    schema has no uri: its image_name stands in."""
    import tensorflow as tf

    if not wanted:
        return {}
    files = record_files(data_dir, split)
    spec = {"image_uri": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "image_name": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP" if files[0].endswith(".gz") else ""),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    parsed = records.map(lambda r: tf.io.parse_single_example(r, spec)).batch(1024)
    found, index = {}, 0
    for batch in parsed:
        for uri, name, label in zip(batch["image_uri"].numpy(), batch["image_name"].numpy(), batch["label"].numpy()):
            if index in wanted:
                found[index] = ((uri or name).decode(), int(label))
            index += 1
    return found


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
    calibration: dict = field(default_factory=dict)  # calibration.reliability: ece, bins
    label_issues: list[LabelIssue] = field(default_factory=list)  # least likely given label first
    issue_gallery: list[Example] = field(default_factory=list)  # the first label issues, as the model saw them
    saliency: dict = field(default_factory=dict)  # {"images", "seconds"} explained, or {"skipped": why}
    # Temperature scaling inside the SavedModel (training fitted it on VALIDATION): the probabilities above are
    # calibrated; `uncalibrated` is calibration.reliability of the probabilities before it (the temperature undone)
    # and the accuracy they give (the same: scaling never changes the likeliest class).
    temperature: float = 1.0
    uncalibrated: dict = field(default_factory=dict)  # {"ece", "bins", "accuracy", "note": why T is 1, if it is}
    # 2 classes: the model's operating threshold (its `labels` output) and the positive (second) class's precision
    # and recall at it on this split; the precision-recall curve ("thresholds", "precision", "recall").
    operating_point: dict = field(default_factory=dict)
    pr: dict = field(default_factory=dict)

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
             loaded=None, saliency_images: int = SALIENCY_IMAGES) -> Evaluation:
    """Runs the exported model's pixel signature over the split, decoded exactly as in training, and keeps
    `gallery_size` of the images for the report, the first `saliency_images` of them with a saliency overlay.
    `loaded`: the SavedModel at model_dir, when already loaded."""
    class_names = schema.read_labels(data_dir)
    split = evaluation_split(data_dir)
    info = training_info(model_dir)
    image_size = info["config"]["image_size"]
    loaded = loaded or load_saved_model(model_dir)
    predict = loaded.signatures["predict_pixels"]
    model_info = {k: v.numpy() for k, v in loaded.signatures["model_info"]().items()}
    temperature = float(model_info.get("temperature", 1.0))  # a SavedModel exported before calibration has none
    threshold = float(model_info.get("threshold", 0.0))
    probabilities, labels = [], []
    gallery = Gallery(class_names, gallery_size)
    suspects = LeastLikelyLabels(gallery_size)
    with shard_errors(data_dir):  # one pass: nothing to cache
        for pixels, batch_labels in make_dataset(data_dir, split, image_size, batch_size, cache="none"):
            probabilities.append(predict(pixels=pixels)["probabilities"].numpy())
            labels.append(batch_labels.numpy())
            batch = pixels.numpy()
            gallery.add(batch, labels[-1], probabilities[-1])
            suspects.add(batch, labels[-1], probabilities[-1])
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
        calibration=reliability(probabilities, labels), temperature=temperature,
    )
    raw = scale(probabilities, 1.0 / temperature)  # T = 1: the same probabilities (to the clipping's 1e-7)
    result.uncalibrated = {**reliability(raw, labels), "accuracy": float((raw.argmax(axis=1) == labels).mean()),
                           "note": info.get("calibration", {}).get("note", "")}
    result.gallery, result.saliency = gallery.examples(predict, saliency_images)
    _add_label_issues(result, data_dir, probabilities, labels, suspects)
    if len(class_names) == 2:
        fpr, tpr, thresholds = roc_curve(probabilities[:, 1], labels == 1)
        result.roc = {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}
        result.pr = precision_recall_curve(probabilities[:, 1], labels == 1)
        result.operating_point = {"threshold": threshold, "positive": class_names[1],
                                  "chosen_by": info.get("calibration", {}).get("operating_point", ""),
                                  **at_threshold(probabilities[:, 1], labels == 1, threshold or 0.5)}
    log.info("%s accuracy %.4f, AUC %.4f, ECE %.4f on %d examples; %d label issues", split, result.accuracy,
             result.auc, result.calibration["ece"], result.examples, len(result.label_issues))
    return result


def _add_label_issues(result: Evaluation, data_dir: str, probabilities: np.ndarray, labels: np.ndarray,
                      suspects: LeastLikelyLabels) -> None:
    names = result.class_names
    issues = find_label_issues(probabilities, labels)
    uris = record_uris(data_dir, result.split, set(issues.tolist()))
    mismatched = [i for i in issues if uris[i][1] != labels[i]]
    if mismatched:  # the uri pass must count records exactly as make_dataset yields them
        raise RuntimeError(f"record {mismatched[0]}'s label differs between the two passes over {data_dir}")
    result.label_issues = [LabelIssue(uris[i][0], names[labels[i]], names[int(probabilities[i].argmax())],
                                      float(probabilities[i, labels[i]])) for i in issues]
    flagged = set(issues.tolist())
    picked = sorted((item for item in suspects.heap if item[1] in flagged), reverse=True)
    result.issue_gallery = [Example(names[label], names[predicted], -priority, thumbnail(image))
                            for priority, _, image, label, predicted in picked]
