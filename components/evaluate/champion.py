"""Champion/challenger: the candidate is published only when it is at least as good as the version being served.

The champion (locally the newest usable version under the model base by the model store's rule, on Vertex the
model's `default` version; a version that does not load or answers NaN is named in a warning and skipped) is
scored on the same held-out split of the same records as the candidate, so the two accuracies are comparable;
`decide` then applies the rule (TFX's Evaluator "blessing"): the candidate beats always answering the split's
largest class (a model that learned nothing scores exactly that), reaches `min_accuracy` and is not worse than
the champion by more than `max_regression`. A rejection is a result, not a failure.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from components import model_store
from components.errors import InputError
from components.evaluate.config import GATE

log = logging.getLogger(__name__)

# Accuracies on the same split are fractions k/n, but `champion - max_regression` is computed in floating point
# (0.9 - 0.05 == 0.8500000000000001): a candidate exactly at the limit must not be rejected by rounding.
TOLERANCE = 1e-9
MIN_ACCURACY = GATE.min_accuracy  # components/evaluate/config.py


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str
    candidate_accuracy: float = math.nan
    champion_accuracy: float | None = None  # None: no champion to compare with


@dataclass(frozen=True)
class Champion:
    model_dir: str  # the SavedModel folder
    version: str  # what people call it: the version number locally, the artifact URI on Vertex
    class_names: list[str] | None = None  # from its training.json
    loaded: object = None  # the SavedModel, loaded and checked (model_store.load_checked)


def check_max_regression(max_regression: float) -> None:
    if not 0.0 <= max_regression <= 1.0:
        raise InputError(f"--max-regression must be between 0 and 1 (an accuracy difference), got {max_regression}")


def majority(class_names: list[str], confusion_matrix: list[list[int]]) -> tuple[str, float]:
    """The split's largest class and its share: the accuracy of always answering it (the first on a tie)."""
    counts = [sum(row) for row in confusion_matrix]
    largest = max(range(len(counts)), key=counts.__getitem__)
    return class_names[largest], counts[largest] / max(sum(counts), 1)


def decide(candidate_accuracy: float, champion_accuracy: float | None, min_accuracy: float,
           max_regression: float = GATE.max_regression, majority: tuple[str, float] | None = None) -> Decision:
    """Whether the candidate is published: accuracy above `majority`'s share (the split's largest class, see
    majority(): a model that learned nothing scores exactly that), >= min_accuracy, and not worse than the
    champion (when there is one) by more than max_regression (0: ties publish); the reason names the first
    rule it fails. A NaN candidate never is; a NaN champion (it could not be scored) counts as no champion."""
    check_max_regression(max_regression)
    if champion_accuracy is not None and not math.isfinite(champion_accuracy):
        champion_accuracy = None

    def decision(publish: bool, reason: str) -> Decision:
        return Decision(publish, reason, candidate_accuracy, champion_accuracy)

    if not math.isfinite(candidate_accuracy):
        return decision(False, f"the candidate's accuracy is {candidate_accuracy}")
    if majority is not None and candidate_accuracy <= majority[1] + TOLERANCE:
        name, share = majority
        return decision(False, f'accuracy {candidate_accuracy:.3f} is no better than always answering "{name}" '
                               f"({share:.3f})")
    if candidate_accuracy < min_accuracy:
        return decision(False, f"accuracy {candidate_accuracy:.4f} is below --min-accuracy {min_accuracy:g}")
    if champion_accuracy is not None and candidate_accuracy + TOLERANCE < champion_accuracy - max_regression:
        return decision(False, f"accuracy {candidate_accuracy:.4f} is worse than the champion's "
                               f"{champion_accuracy:.4f} by more than --max-regression {max_regression:g}")
    if champion_accuracy is None:
        return decision(True, f"accuracy {candidate_accuracy:.4f} reaches --min-accuracy {min_accuracy:g} "
                              "and there is no champion to compare with")
    return decision(True, f"accuracy {candidate_accuracy:.4f} reaches --min-accuracy {min_accuracy:g} and the "
                          f"champion's {champion_accuracy:.4f} (--max-regression {max_regression:g})")


def summary_line(decision: Decision, champion_version: str | None) -> str:
    """The line `catsdogs run` prints about the decision. A rejected candidate's says `not deployed:`, why (the
    accuracies that decided it) and the version that stays."""
    if decision.publish:
        champion = ""
        if decision.champion_accuracy is not None:
            champion = f", champion (version {champion_version}) {decision.champion_accuracy:.4f}"
        return f"deployed: candidate {decision.candidate_accuracy:.4f}{champion}: {decision.reason}"
    kept = f"version {champion_version} stays deployed" if champion_version else "no version is deployed"
    return f"not deployed: {decision.reason}; {kept}"


def decision_from_metrics(metrics: dict) -> Decision:
    """The Decision the evaluate step logged in its Metrics (`published`, `decision`, `accuracy`,
    `champion_accuracy`), e.g. from the local pipeline's output; its `champion_version` goes to summary_line."""
    return Decision(bool(metrics["published"]), str(metrics["decision"]), float(metrics["accuracy"]),
                    metrics.get("champion_accuracy"))


def find_champion(champion_uri: str) -> Champion | None:
    """The SavedModel to compare with: champion_uri itself when it holds saved_model.pb (a Vertex model's
    artifact URI, a SavedModel folder), else the newest usable version under it (a local or gs:// model base).
    None when there is nothing usable yet (empty URI, missing or empty model base: the first run)."""
    if not champion_uri:
        return None
    found = model_store.champion(champion_uri, _load_champion)
    if found is None:
        return None
    version, path, (info, loaded) = found
    return Champion(path, champion_uri if path == champion_uri else str(version), info.get("class_names"), loaded)


def _load_champion(path: str) -> tuple[dict, object]:
    """A version is usable as champion when its training.json reads and its SavedModel passes the store's rule."""
    return model_store.training_info(path), model_store.load_checked(path)


def score_champion(champion: Champion, data_dir: str, candidate_split: str, class_names: list[str]):
    """The champion's Evaluation on the candidate's split of data_dir, or None when the two are not comparable
    (the champion knows other classes: the label indices of the records mean something else to it, or it
    answers NaN on these images)."""
    from components.evaluate.core import NonFiniteAnswers, evaluate

    if champion.class_names != class_names:
        log.warning("champion version %s predicts %s, the records hold %s: not comparable, deciding on "
                    "--min-accuracy alone", champion.version, champion.class_names, class_names)
        return None
    try:
        result = evaluate(champion.model_dir, data_dir, loaded=champion.loaded, saliency_images=0)
    except NonFiniteAnswers as e:
        log.warning("skipping champion version %s: %s; deciding on --min-accuracy alone", champion.version, e)
        return None
    if result.split != candidate_split:  # evaluate picks the split from the records: the same for both
        raise AssertionError(f"champion scored on {result.split}, candidate on {candidate_split}")
    return result
