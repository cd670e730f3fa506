from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def export(model: Input[Model], tfrecords: Input[Dataset], export_formats: str, exports: Output[Artifact],
           metrics: Output[Metrics]):
    """Exports the trained SavedModel to TFLite and/or ONNX, each checked against the SavedModel on the TEST
    split before it is written; an export under its agreement bar fails the step with one line.

    Args:
        model: The SavedModel (the train step's output).
        tfrecords: The conversion's output: TEST to measure on, TRAIN to calibrate int8.
        export_formats: Comma-separated FORMAT[:QUANTIZE], e.g. "onnx,tflite,tflite:int8" (QUANTIZE: none, fp16,
            int8; fp16 and int8 for tflite only).
        exports: A folder: model.onnx, model[-fp16|-int8].tflite and export.json (each file's input, classes,
            size and its parity and latency against the SavedModel).
        metrics: Per export: agreement, accuracy difference, max probability difference, size and p50 latency.
    """
    from components import logs
    from components.export.core import SavedModel, export_model, parse_formats, table
    from components.step_summary import write_summary

    logs.setup()
    pairs = parse_formats(export_formats)
    saved = SavedModel(model.uri)
    rows = [export_model(model.uri, tfrecords.uri, fmt, quantize, exports.uri, model=saved) for fmt, quantize in pairs]
    print(table(rows), flush=True)
    for row in rows:
        prefix = row.file.replace(".", "_").replace("-", "_")  # model_int8_tflite_agreement
        for name in ("agreement", "accuracy_difference", "max_probability_difference", "size_bytes",
                     "latency_ms_p50"):
            metrics.log_metric(f"{prefix}_{name}", float(getattr(row, name)))
    if rows:
        metrics.log_metric("savedmodel_latency_ms_p50", rows[0].savedmodel_latency_ms_p50)
        metrics.log_metric("savedmodel_size_bytes", float(rows[0].savedmodel_size_bytes))
        metrics.log_metric("split", rows[0].split)
        metrics.log_metric("examples", rows[0].examples)
    write_summary(exports, "; ".join(f"{r.file} {r.size_bytes / 1e6:.1f} MB, {r.agreement:.1%} agree, "
                                     f"{r.latency_ms_p50:.2f} ms" for r in rows))
    exports.metadata.update({"files": {row.file: {"agreement": row.agreement, "size_bytes": row.size_bytes,
                                                  "latency_ms_p50": row.latency_ms_p50} for row in rows}})
