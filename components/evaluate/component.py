from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    tfrecords: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    min_accuracy: float = 0.0,
    wandb_settings: Optional[Dict[str, str]] = None,
) -> bool:
    """Scores the exported SavedModel on the TEST split (VALIDATION if there is no TEST): accuracy, AUC,
    per-class precision/recall, confusion matrix and ROC (2 classes), an HTML report with the training
    curves. Returns whether accuracy reaches min_accuracy: the deploy gate.
    wandb_settings (tracking.pipeline_settings) makes it a W&B run: model and tfrecords in, metrics, confusion
    matrix and a table of sample predictions out."""
    import math

    from components import logs, storage, tracking
    from components.evaluate.core import evaluate as score
    from components.evaluate.report import html_report
    from components.train.core import training_info

    logs.setup()
    with tracking.step_run("evaluate", wandb_settings, {"min_accuracy": min_accuracy}) as run:
        run.use("model", model.uri)
        run.use("tfrecords", tfrecords.uri)
        result = score(model.uri, tfrecords.uri)
        run.log_evaluation(result, model.uri, tfrecords.uri)
    metrics.log_metric("accuracy", result.accuracy)
    if math.isfinite(result.auc):  # undefined when the split lacks a class; KFP metadata refuses NaN
        metrics.log_metric("auc", result.auc)
    metrics.log_metric("examples", result.examples)
    metrics.log_metric("split", result.split)
    for name, scores in result.per_class().items():
        for metric, value in scores.items():
            metrics.log_metric(f"{metric}_{name}", value)
    confusion.log_confusion_matrix(result.class_names, result.confusion_matrix)
    if result.roc:
        confusion.log_roc_curve(result.roc["fpr"], result.roc["tpr"], result.roc["thresholds"])
    storage.write_text(report.uri, html_report(result, training_info(model.uri)["history"]))
    # A single, unnamed bool: kfp.local 2.17 cannot resolve a dsl.If on a named (NamedTuple) output.
    return result.accuracy >= min_accuracy
