"""The SavedModel's pixel signature exported to TFLite (LiteRT) or ONNX, checked against the SavedModel on the
held-out split before the file is written.

What an exported file takes and gives is the SavedModel's `predict_pixels` signature at the model's size:
`pixels` float32 [N, S, S, 3], RGB, 0..255 (the caller decodes and resizes to S x S; the rescaling stays inside),
-> `probabilities` float32 [N, K], in the order of `classes`. export.json beside the files says so for each.

Every export is measured on the TEST split (VALIDATION without one) against the SavedModel on the same decoded
pixels (training's reader, so exactly the pixels evaluation scores): top-1 agreement, both accuracies, the
largest probability difference, file size and the median latency of one image on this CPU. An export whose
agreement is under its bar (MIN_AGREEMENT) is refused with one error line and nothing is written.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from components import storage
from components.contracts import HELD_OUT_SPLITS, SAVED_MODEL_FILE, TRAIN, TRAINING_INFO_FILE
from components.errors import InputError
from components.export import runtimes

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tflite")
QUANTIZATIONS = ("none", "fp16", "int8")
# fp16 stores the weights in half precision, int8 quantizes weights and activations: both only for TFLite here
# (ONNX Runtime runs float32 ONNX on CPU; its own quantizer is another tool's job).
FORMAT_QUANTIZATIONS = {"onnx": ("none",), "tflite": QUANTIZATIONS}
# Top-1 agreement with the SavedModel an export needs: quantizing to int8 moves a few borderline images.
MIN_AGREEMENT = {"none": 0.995, "fp16": 0.995, "int8": 0.98}
# int8 calibration: the activations' ranges come from this many TRAIN images (TensorFlow's guide: ~100-500).
REPRESENTATIVE_IMAGES = 200
MANIFEST = "export.json"
DEFAULT_SUBDIR = "export"  # catsdogs export MODEL_DIR writes to MODEL_DIR/export without --output-dir
BATCH = 64


def default_output_dir(model_dir: str) -> str:
    return storage.join(model_dir, DEFAULT_SUBDIR)


def check_model_dir(model_dir: str) -> None:
    if not storage.exists(storage.join(model_dir, SAVED_MODEL_FILE)):
        raise InputError(f"{model_dir} holds no {SAVED_MODEL_FILE}: is it the output of `catsdogs train`?")


def training_data(model_dir: str) -> str:
    """The TFRecords the model was trained on, as training.json beside it records them."""
    check_model_dir(model_dir)
    path = storage.join(model_dir, TRAINING_INFO_FILE)
    data = json.loads(storage.read_text(path)).get("data", "") if storage.exists(path) else ""
    if not data:
        raise InputError(f"{model_dir}: no training data recorded in {TRAINING_INFO_FILE}; pass --data TFRECORD_DIR "
                         f"(the output folder of `catsdogs convert`)")
    return data


def file_name(fmt: str, quantize: str) -> str:
    """model.onnx, model.tflite, model-fp16.tflite, model-int8.tflite."""
    return f"model{'' if quantize == 'none' else '-' + quantize}.{fmt}"


def parse_formats(text: str) -> list[tuple[str, str]]:
    """The pipeline's export_formats, "onnx,tflite,tflite:int8", as (format, quantization) pairs; "" is none."""
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        fmt, _, quantize = item.partition(":")
        try:
            check(fmt, quantize or "none")
        except InputError as e:
            raise InputError(f"export formats {text!r}: {e} (expected FORMAT[:QUANTIZE],...)") from None
        pairs.append((fmt, quantize or "none"))
    return pairs


def check(fmt: str, quantize: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r} is unknown: choose from {', '.join(FORMATS)}")
    if quantize not in FORMAT_QUANTIZATIONS[fmt]:
        raise InputError(f"quantize {quantize!r} is not available for {fmt}: choose from "
                         f"{', '.join(FORMAT_QUANTIZATIONS[fmt])}")


@dataclass
class Parity:
    """One export measured against the SavedModel on the same images."""

    file: str
    format: str
    quantize: str
    size_bytes: int
    runtime: str
    split: str
    examples: int
    agreement: float  # share of images whose top-1 class is the SavedModel's
    min_agreement: float
    accuracy: float
    savedmodel_accuracy: float
    accuracy_difference: float  # accuracy - savedmodel_accuracy
    max_probability_difference: float
    latency_ms_p50: float  # one image, this machine's CPU
    savedmodel_latency_ms_p50: float
    savedmodel_size_bytes: int

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement


class SavedModel:
    """The SavedModel's pixel signature at its own size, and what model_info says about it."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        check_model_dir(model_dir)
        self.model_dir = model_dir
        self.loaded = tf.saved_model.load(model_dir)
        missing = {"predict_pixels", "model_info"} - set(self.loaded.signatures)
        if missing:
            raise InputError(f"{model_dir}: the SavedModel has no {', '.join(sorted(missing))} signature: export "
                             f"needs one written by `catsdogs train`")
        info = self.loaded.signatures["model_info"]()
        self.image_size = int(info["image_size"])
        self.classes = [c.decode() for c in info["classes"].numpy()]
        # The operating threshold chosen in training (0: the likeliest class); the probabilities are already
        # calibrated inside the signature, so an exported file gives the served model's probabilities.
        self.threshold = float(info["threshold"]) if "threshold" in info else 0.0
        signature = self.loaded.signatures["predict_pixels"]
        self.spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32, name=runtimes.INPUT_NAME)

        @tf.function(input_signature=[self.spec])
        def probabilities(pixels):
            return {runtimes.OUTPUT_NAME: signature(pixels=pixels)["probabilities"]}

        self.function = probabilities

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.function(pixels)[runtimes.OUTPUT_NAME].numpy()

    def size_bytes(self) -> int:
        """saved_model.pb and variables/, what serving loads (not training.json or earlier exports)."""
        return sum(len(storage.read_bytes(storage.join(self.model_dir, rel)))
                   for rel in storage.walk_files(self.model_dir)
                   if rel == SAVED_MODEL_FILE or rel.startswith("variables/"))

    def input_spec(self) -> dict:
        s = self.image_size
        return {"name": runtimes.INPUT_NAME, "dtype": "float32", "shape": [-1, s, s, 3], "layout": "NHWC",
                "channels": "RGB", "range": [0, 255],
                "preprocessing": f"decode the image upright to RGB and resize it to {s}x{s} (bilinear); the "
                                 f"rescaling is inside the model, as in the SavedModel's predict_pixels signature"}


def _held_out(data_dir: str, image_size: int):
    """(split, batches) of the first held-out split that has records, read by training's reader."""
    from components.train.data import make_dataset

    for split in HELD_OUT_SPLITS:
        try:
            return split, make_dataset(data_dir, split, image_size, BATCH, cache="none")
        except FileNotFoundError:
            continue
    raise InputError(f"{data_dir} has no {' or '.join(HELD_OUT_SPLITS)} records to measure the export on")


def _representative(data_dir: str, image_size: int):
    """int8 calibration data: up to REPRESENTATIVE_IMAGES TRAIN images, one at a time, streamed."""
    from components.train.data import make_dataset

    try:
        dataset = make_dataset(data_dir, TRAIN, image_size, 1, cache="none").take(REPRESENTATIVE_IMAGES)
    except FileNotFoundError as e:
        raise InputError(f"{data_dir} has no {TRAIN} records: int8 quantization calibrates on them") from e

    def images():
        for pixels, _ in dataset:
            yield [pixels]

    return images


def convert(model: SavedModel, fmt: str, quantize: str, path: str, data_dir: str) -> None:
    """Writes the exported model to the local file path."""
    import tensorflow as tf

    if fmt == "onnx":
        import onnx
        import tf2onnx

        proto, _ = tf2onnx.convert.from_function(model.function, input_signature=[model.spec])
        # The signature's class-name constant becomes an input no node reads: drop it, one input is the contract.
        used = {name for node in proto.graph.node for name in node.input}
        for unused in [i for i in proto.graph.input if i.name not in used]:
            proto.graph.input.remove(unused)
        onnx.save(proto, path)
        return
    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.function.get_concrete_function()],
                                                                model.loaded)
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":  # weights and activations; float32 in and out, so the input contract is the same
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(data_dir, model.image_size)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with open(path, "wb") as f:
        f.write(converter.convert())


def measure(model: SavedModel, path: str, fmt: str, quantize: str, data_dir: str) -> Parity:
    """The exported file at path against the SavedModel on the held-out split (streamed: memory does not grow
    with the split), and both latencies on one of its images."""
    from components.train.data import shard_errors

    exported = runtimes.load(path)
    split, batches = _held_out(data_dir, model.image_size)
    examples = agree = correct = savedmodel_correct = 0
    max_difference = 0.0
    first = None
    with shard_errors(data_dir):
        for pixels, labels in batches:
            pixels, labels = pixels.numpy(), labels.numpy()
            expected, got = model(pixels), exported(pixels)
            if not np.isfinite(got).all():
                raise InputError(f"the {quantize} {fmt} export of {model.model_dir} gives NaN or infinite "
                                 f"probabilities: not written")
            examples += len(labels)
            agree += int((expected.argmax(1) == got.argmax(1)).sum())
            correct += int((got.argmax(1) == labels).sum())
            savedmodel_correct += int((expected.argmax(1) == labels).sum())
            max_difference = max(max_difference, float(np.abs(expected - got).max()))
            first = pixels[:1] if first is None else first
    if not examples:
        raise InputError(f"{data_dir}: the {split} split is empty; nothing to measure the export on")
    accuracy, savedmodel_accuracy = correct / examples, savedmodel_correct / examples
    latency, savedmodel_latency = runtimes.latencies_ms_p50([exported, model], first)
    return Parity(
        file=os.path.basename(path), format=fmt, quantize=quantize, size_bytes=os.path.getsize(path),
        runtime=exported.runtime, split=split, examples=examples, agreement=agree / examples,
        min_agreement=MIN_AGREEMENT[quantize], accuracy=accuracy, savedmodel_accuracy=savedmodel_accuracy,
        accuracy_difference=accuracy - savedmodel_accuracy, max_probability_difference=max_difference,
        latency_ms_p50=latency, savedmodel_latency_ms_p50=savedmodel_latency,
        savedmodel_size_bytes=model.size_bytes(),
    )


def export_model(model_dir: str, data_dir: str, fmt: str, quantize: str = "none", output_dir: str | None = None,
                 model: SavedModel | None = None) -> Parity:
    """Exports, measures and, when the export passes its bar, writes output_dir/<file> and its entry in
    output_dir/export.json (entries of other files there are kept). Below the bar: InputError, nothing written."""
    check(fmt, quantize)
    output_dir = output_dir or default_output_dir(model_dir)
    model = model or SavedModel(model_dir)
    name = file_name(fmt, quantize)
    with tempfile.TemporaryDirectory(prefix="catsdogs-export-") as staging:
        path = os.path.join(staging, name)
        log.info("exporting %s to %s (quantize %s)", model_dir, name, quantize)
        convert(model, fmt, quantize, path, data_dir)
        parity = measure(model, path, fmt, quantize, data_dir)
        if not parity.passed:
            raise InputError(
                f"the {fmt} export of {model_dir} (quantize {quantize}) agrees with the SavedModel on "
                f"{parity.agreement:.1%} of {parity.examples} {parity.split} images, under the "
                f"{parity.min_agreement:.1%} bar (max probability difference {parity.max_probability_difference:.3f})"
                f": refused, nothing written")
        _publish(path, storage.join(output_dir, name))
    _record(output_dir, manifest_entry(model, parity, model_dir, data_dir))
    log.info("wrote %s: agreement %.4f, %d bytes", storage.join(output_dir, name), parity.agreement, parity.size_bytes)
    return parity


def manifest_entry(model: SavedModel, parity: Parity, model_dir: str, data_dir: str) -> dict:
    return {**asdict(parity), "input": model.input_spec(),
            "output": {"name": runtimes.OUTPUT_NAME, "dtype": "float32", "shape": [-1, len(model.classes)],
                       "meaning": "class probabilities, in the order of classes (calibrated, as served)",
                       "threshold": model.threshold,
                       "decision": (f"{model.classes[1]} when its probability >= threshold, else {model.classes[0]}"
                                    if model.threshold else "the likeliest class")},
            "classes": model.classes, "signature": "serving_default" if parity.format == "tflite" else None,
            "model_dir": model_dir, "data_dir": data_dir,
            "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _publish(local_file: str, target: str) -> None:
    """The file into place in one step locally (a reader never sees half of it); uploaded on gs://."""
    with open(local_file, "rb") as f:
        data = f.read()
    if storage.is_gcs(target):
        storage.write_bytes(target, data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    staged = f"{target}.partial"
    with open(staged, "wb") as f:
        f.write(data)
    os.replace(staged, target)


def read_manifest(output_dir: str) -> dict:
    path = storage.join(output_dir, MANIFEST)
    return json.loads(storage.read_text(path)) if storage.exists(path) else {"exports": {}}


def _record(output_dir: str, entry: dict) -> None:
    manifest = read_manifest(output_dir)
    manifest["exports"][entry["file"]] = entry
    manifest["exports"] = dict(sorted(manifest["exports"].items()))
    path = storage.join(output_dir, MANIFEST)
    text = json.dumps(manifest, indent=1) + "\n"
    if storage.is_gcs(path):
        storage.write_text(path, text)
        return
    with open(f"{path}.partial", "w") as f:
        f.write(text)
    os.replace(f"{path}.partial", path)


def table(rows: list[Parity]) -> str:
    """The parity table the command prints: the SavedModel first, then each export."""
    header = (f"{'file':<20} {'size':>9} {'p50 ms':>7} {'agreement':>9} {'accuracy':>8} {'Δ acc':>7} "
              f"{'max Δp':>7}  runtime")
    lines = [header]
    if rows:
        first = rows[0]
        lines.append(f"{'SavedModel':<20} {_size(first.savedmodel_size_bytes):>9} "
                     f"{first.savedmodel_latency_ms_p50:>7.2f} {'':>9} {first.savedmodel_accuracy:>8.4f} "
                     f"{'':>7} {'':>7}  tensorflow")
    for p in rows:
        lines.append(f"{p.file:<20} {_size(p.size_bytes):>9} {p.latency_ms_p50:>7.2f} {p.agreement:>9.2%} "
                     f"{p.accuracy:>8.4f} {p.accuracy_difference:>+7.4f} {p.max_probability_difference:>7.1e}  "
                     f"{p.runtime}")
    if rows:
        lines.append(f"on {rows[0].examples} {rows[0].split} images; latency: one image, median of "
                     f"{runtimes.LATENCY_RUNS} calls on this CPU, alternating with the SavedModel's")
    return "\n".join(lines)


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
