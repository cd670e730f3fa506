from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import LOCAL


# In the serving image, so the check proves the image Vertex will serve the model with (it runs `catsdogs serve`).
@dsl.component(base_image=LOCAL.serving, install_kfp_package=False)
def check_serving(
    model: Input[Model],
    tfrecords: Input[Dataset],
    metrics: Output[Metrics],
    serving_check: Output[Artifact],
    max_p99_ms: float = 0.0,
    min_throughput: float = 0.0,
    max_memory_mb: float = 0.0,
    evaluation_blessed: bool = True,
) -> bool:
    """Serves the candidate with the real server, checks its answers in every documented request format against
    the SavedModel's own on held-out images, measures latency, throughput and memory, and blesses or refuses it.

    Args:
        model: The candidate SavedModel (the train step's output).
        tfrecords: The converted records: a sample of their held-out split is sent.
        metrics: p50_ms, p99_ms, throughput, peak_memory_mb, formats_agreeing, blessed (1/0), decision.
        serving_check: serving_check.json: every figure, each format's comparison, the reasons for a refusal.
        max_p99_ms: Refuse above this p99 latency at concurrency 1 (0: no limit).
        min_throughput: Refuse below this many images/s at concurrency 8 (0: no limit).
        max_memory_mb: Refuse above this peak server memory (0: no limit).
        evaluation_blessed: Evaluation's decision: when False nothing is checked and the answer is False.

    Returns:
        Whether evaluation and serving both blessed the candidate: the deploy gate.
    """
    from components import logs, storage
    from components.serve_check.core import Limits, check_serving
    from components.step_summary import write_summary

    logs.setup()
    if not evaluation_blessed:
        print("serving check not run: evaluation did not bless the candidate", flush=True)
        metrics.log_metric("blessed", 0.0)
        metrics.log_metric("decision", "not run: evaluation did not bless the candidate")
        serving_check.metadata["blessed"] = False
        write_summary(serving_check, "not run: evaluation did not bless the candidate")
        storage.write_text(serving_check.uri, '{"blessed": false, "reasons": ["evaluation did not bless it"]}')
        return False
    result = check_serving(model.uri, tfrecords.uri, Limits(max_p99_ms, min_throughput, max_memory_mb))
    print(result.summary(), flush=True)
    for name in ("p50_ms", "p99_ms", "throughput", "peak_memory_mb"):
        if getattr(result, name) is not None:
            metrics.log_metric(name, getattr(result, name))
    metrics.log_metric("formats_agreeing", sum(f["labels_equal"] for f in result.formats.values()))
    metrics.log_metric("blessed", float(result.blessed))
    metrics.log_metric("decision", "; ".join(result.reasons) or "blessed")
    serving_check.metadata["blessed"] = result.blessed
    write_summary(serving_check, result.summary().removeprefix("serving check "))
    storage.write_text(serving_check.uri, result.to_json())
    # A single, unnamed bool: kfp.local 2.17 cannot resolve a dsl.If on a named (NamedTuple) output.
    return result.blessed
