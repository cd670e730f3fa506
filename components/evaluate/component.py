from typing import Dict, Optional

from google_cloud_pipeline_components.types import artifact_types
from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    tfrecords: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[artifact_types.ClassificationMetrics],
    min_accuracy: float,  # no default: KFP runs this source alone; both pipelines pass GATE.min_accuracy's
    champion_uri: str = "",
    max_regression: float = 0.0,
    wandb_settings: Optional[Dict[str, str]] = None,
    intended_use: str = "",
    saliency_images: int = 12,
    validation: Input[Artifact] = None,
) -> bool:
    """Scores the exported SavedModel, and the champion (the version served now) on the same records, and
    decides whether the candidate may be deployed.

    Both are scored on the TEST split (VALIDATION if there is no TEST): accuracy, AUC, per-class
    precision/recall, confusion matrix and ROC (2 classes), and an HTML report with the training curves.

    Args:
        model: The candidate SavedModel (the train step's output); its drift baseline (baseline.json, see
            components/monitor) is written beside it, so publishing carries it along.
        tfrecords: The records to score on (the convert step's output).
        metrics: Accuracy, AUC, per-class scores, ECE (and with temperature scaling `temperature` and
            `ece_uncalibrated`; 2 classes: `threshold`, `precision_at_threshold`, `recall_at_threshold`); the
            champion's accuracy and the decision (`published` 1/0, `decision`, `champion_version`).
        confusion: Confusion matrix and ROC curve.
        report: HTML report: curves, confusion matrix, calibration, label issues, model card, the decision;
            label_issues.csv and model_card.md are written beside it (model_card.md also beside the SavedModel).
        evaluation: The metrics in Vertex's classification schema and the decision, for the Model Registry.
        min_accuracy: Accuracy the candidate needs to be deployed, besides beating always answering the
            split's largest class.
        champion_uri: The version served now: a model base (the newest version under it), a SavedModel folder
            or a Vertex model's artifact URI (gs://). Empty: no champion, min_accuracy alone decides.
        max_regression: How much lower than the champion's the candidate's accuracy may be (0: ties deploy).
        wandb_settings: W&B settings (tracking.settings); makes it a W&B run: model and tfrecords in, metrics,
            confusion matrix, sample predictions and the decision out.
        intended_use: The model card's intended use (empty: model_card.DEFAULT_INTENDED_USE).
        saliency_images: How many of the report's images get a saliency overlay (integrated gradients; each
            costs 16 passes through the model; 0: none).
        validation: The validate step's folder (components/validate): its findings become a section of the report.

    Returns:
        Whether the candidate is deployed (the deploy gate): accuracy above the largest class's share of the
        split, >= min_accuracy, and not worse than the champion by more than max_regression.
    """
    import json
    import math
    from dataclasses import asdict

    from components import logs, storage, tracking
    from components.convert.schema import read_summary
    from components.deploy.registry import evaluation_file
    from components.evaluate.champion import check_max_regression, decide, find_champion, majority, score_champion
    from components.evaluate.core import evaluate as score
    from components.evaluate.label_issues import ISSUES_FILE, issues_csv
    from components.evaluate.model_card import CARD_FILE, model_card
    from components.evaluate.report import html_report, step_summary
    from components.model_store import training_info
    from components.monitor.baseline import write_baseline
    from components.step_summary import write_summary

    logs.setup()
    check_max_regression(max_regression)
    config = {"min_accuracy": min_accuracy, "champion_uri": champion_uri, "max_regression": max_regression}
    with tracking.step_run("evaluate", "train", wandb_settings, config) as run:
        run.use("model", model.uri)
        run.use("tfrecords", tfrecords.uri)
        result = score(model.uri, tfrecords.uri, saliency_images=saliency_images)
        write_baseline(model.uri, tfrecords.uri, result.split)  # drift monitoring's baseline, beside the model
        wandb_run = f"{run.run.project}/{run.run.id}" if run.run is not None else None
        run.log_evaluation(result)
        champion = find_champion(champion_uri)
        scored = score_champion(champion, tfrecords.uri, result.split, result.class_names) if champion else None
        decision = decide(result.accuracy, scored.accuracy if scored else None, min_accuracy, max_regression,
                          majority(result.class_names, result.confusion_matrix))
        summary = {"accuracy": result.accuracy, "split": result.split, "examples": result.examples,
                   "champion_accuracy": decision.champion_accuracy,
                   "champion_version": champion.version if champion else None,
                   "published": decision.publish, "reason": decision.reason}
        if run.run is not None:
            run.run.summary.update({f"decision/{k}": v for k, v in summary.items() if v is not None})
    metrics.log_metric("accuracy", result.accuracy)
    if math.isfinite(result.auc):  # undefined when the split lacks a class; KFP metadata refuses NaN
        metrics.log_metric("auc", result.auc)
    metrics.log_metric("examples", result.examples)
    metrics.log_metric("ece", result.calibration["ece"])
    if result.uncalibrated:
        metrics.log_metric("temperature", result.temperature)
        metrics.log_metric("ece_uncalibrated", result.uncalibrated["ece"])
    if result.operating_point:
        metrics.log_metric("threshold", result.operating_point["threshold"])
        metrics.log_metric("precision_at_threshold", result.operating_point["precision"])
        metrics.log_metric("recall_at_threshold", result.operating_point["recall"])
    metrics.log_metric("label_issues", len(result.label_issues))
    if "seconds" in result.saliency:
        metrics.log_metric("saliency_seconds", result.saliency["seconds"])
    metrics.log_metric("split", result.split)
    for name, scores in result.per_class().items():
        for metric, value in scores.items():
            metrics.log_metric(f"{metric}_{name}", value)
    confusion.log_confusion_matrix(result.class_names, result.confusion_matrix)
    if result.roc:
        confusion.log_roc_curve(result.roc["fpr"], result.roc["tpr"], result.roc["thresholds"])
    if decision.champion_accuracy is not None:
        metrics.log_metric("champion_accuracy", decision.champion_accuracy)
    if champion:
        metrics.log_metric("champion_version", champion.version)
    metrics.log_metric("published", float(decision.publish))
    metrics.log_metric("decision", decision.reason)
    write_summary(metrics, step_summary(metrics.metadata))
    evaluation.metadata.update({k: v for k, v in summary.items() if v is not None})
    storage.write_text(evaluation.uri, json.dumps(evaluation_file(asdict(result), summary), indent=1))
    info = training_info(model.uri)
    lineage = {"model": model.uri, "data": tfrecords.uri, "W&B run": wandb_run,
               "Vertex pipeline run": tracking.vertex_run_labels().get(tracking.VERTEX_RUN_ID_LABEL)}
    card = model_card(result, info, read_summary(tfrecords.uri), lineage, intended_use)
    beside = report.uri.rsplit("/", 1)[0]  # the step's own output folder
    storage.write_text(storage.join(beside, ISSUES_FILE), issues_csv(result.label_issues))
    storage.write_text(storage.join(beside, CARD_FILE), card)
    # Also beside the SavedModel, so the card travels with it: publishing copies the folder as a version, and
    # Vertex uploads it as the model's artifacts.
    storage.write_text(storage.join(model.uri, CARD_FILE), card)
    findings = ""
    if validation is not None:
        from components.validate.report import section

        findings = section(validation.uri)
    storage.write_text(report.uri, html_report(result, info["history"], decision=summary, model_card=card,
                                               extra=findings))
    # A single, unnamed bool: kfp.local 2.17 cannot resolve a dsl.If on a named (NamedTuple) output.
    return decision.publish
