from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    tfrecords: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    min_accuracy: float = 0.0,
) -> bool:
    """Scores the exported SavedModel on the TEST split (VALIDATION if there is no TEST) and returns whether
    its accuracy reaches min_accuracy: the deploy gate."""
    from components import logs
    from components.evaluate.core import evaluate as score

    logs.setup()
    result = score(model.uri, tfrecords.uri)
    metrics.log_metric("accuracy", result.accuracy)
    metrics.log_metric("examples", result.examples)
    metrics.log_metric("split", result.split)
    for name, scores in result.per_class().items():
        for metric, value in scores.items():
            metrics.log_metric(f"{metric}_{name}", value)
    confusion.log_confusion_matrix(result.class_names, result.confusion_matrix)
    # A single, unnamed bool: kfp.local 2.17 cannot resolve a dsl.If on a named (NamedTuple) output.
    return result.accuracy >= min_accuracy
