"""model_card.md: what a model version is, what it was made from, how well it does and where it falls short,
in one Markdown page written by the evaluate step beside its report (and shown in the report)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing core would load TensorFlow into `catsdogs`, which only needs CARD_FILE from here
    from components.evaluate.core import Evaluation

CARD_FILE = "model_card.md"  # beside the evaluate step's report
DEFAULT_INTENDED_USE = ("Telling photographs of cats from dogs (the classes below) for demonstration and "
                        "experiments; not for decisions about people or animals' welfare.")
SECTIONS = ("Intended use", "Data", "Training configuration", "Lineage", "Metrics per class", "Calibration",
            "Operating threshold", "Label issues", "Known limitations")
# The decoder's stated differences (components/decode.py): what the served model sees may differ from training.
DECODER_LIMITS = ("Images are decoded and resized by components/decode.py; animated images are judged by their "
                  "first frame, and other decoders' resizing (e.g. a phone's own thumbnails) can shift scores.")


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return ([f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
            + [f"| {' | '.join(str(c) for c in row)} |" for row in rows])


def _number(value, digits: int = 4) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def _calibration_lines(result: Evaluation, fitted: dict) -> list[str]:
    """Temperature scaling (fitted on VALIDATION in training, in the SavedModel) and the operating threshold."""
    temperature = fitted.get("temperature", result.temperature)
    lines = [f"- Temperature T = {temperature:.4f} (applied inside the SavedModel; 1: not scaled"
             + (f": {fitted['note']}" if fitted.get("note") else "") + ").",
             f"- ECE on VALIDATION: {_number(fitted.get('validation_ece_before'))} before, "
             f"{_number(fitted.get('validation_ece_after'))} after temperature scaling.",
             f"- ECE on {result.split}: {_number(result.uncalibrated.get('ece', result.calibration.get('ece')))} "
             f"before, {_number(result.calibration.get('ece'))} after; accuracy unchanged "
             f"({result.accuracy:.4f})."]
    point = result.operating_point
    lines += ["", "## Operating threshold", ""]
    if not point:
        return lines + ["The likelier class is the answer (more than 2 classes: no threshold)."]
    how = fitted.get("operating_point") or ("given" if point["threshold"] else "the likelier class")
    lines.append(f"Threshold {point['threshold'] or 0.5:.4f} on the probability of {point['positive']} ({how}"
                 + ("" if fitted.get("reached", True) else ", target NOT reached on VALIDATION") + ").")
    if "validation_precision" in fitted:
        lines.append(f"- VALIDATION: precision {fitted['validation_precision']:.4f}, recall "
                     f"{fitted['validation_recall']:.4f}.")
    lines.append(f"- {result.split}: precision {point['precision']:.4f}, recall {point['recall']:.4f}.")
    return lines


def model_card(result: Evaluation, info: dict, data_summary: dict, lineage: dict[str, str | None],
               intended_use: str = DEFAULT_INTENDED_USE, title: str = "catsdogs model") -> str:
    """The card as Markdown. info: the model's training_info; data_summary: the conversion's summary.json;
    lineage: name -> reference (model, data, W&B run, pipeline run...; None: not known)."""
    per_split = data_summary.get("per_split", {})
    lines = [f"# Model card: {title}", "", "## Intended use", "", intended_use or DEFAULT_INTENDED_USE, "",
             "## Data", "", f"Classes: {', '.join(result.class_names)}.", ""]
    lines += _table(("split", "images"), sorted(per_split.items())) if per_split else ["(no conversion summary)"]
    lines += ["", f"Evaluated on {result.examples} {result.split} images.", "", "## Training configuration", "",
              "```json", json.dumps(info.get("config", {}), indent=1, sort_keys=True), "```", "",
              f"Epochs run: {len(info.get('history', {}).get('loss', []))}.", "", "## Lineage", ""]
    lines += [f"- {name}: {value if value else 'not recorded'}" for name, value in lineage.items()]
    lines += ["", "## Metrics per class", "", f"Accuracy {result.accuracy:.4f}, AUC {result.auc:.4f} "
              f"on {result.split}.", ""]
    lines += _table(("class", "precision", "recall"),
                    [(n, f"{s['precision']:.3f}", f"{s['recall']:.3f}") for n, s in result.per_class().items()])
    ece = result.calibration.get("ece")
    lines += ["", "## Calibration", "", f"Expected calibration error (ECE, 10 bins) on {result.split}: "
              + (f"{ece:.4f}" if ece is not None else "not measured") + ".", ""]
    lines += _calibration_lines(result, info.get("calibration", {}))
    lines += ["", "## Label issues", "",
              f"{len(result.label_issues)} of the {result.examples} {result.split} images have a given label the "
              "model finds unlikely (label_issues.csv beside the report); relabel them and re-run.", "",
              "## Known limitations", "", f"- {DECODER_LIMITS}",
              f"- Trained at {info.get('config', {}).get('image_size', '?')} px; smaller details are lost.",
              f"- Suspect labels in the evaluation data: {len(result.label_issues)} (see Label issues).", ""]
    return "\n".join(lines)
