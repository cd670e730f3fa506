"""The Beam pipeline behind `catsdogs batch-predict`: a folder or CSV of images -> predictions and errors.

    listing (MatchFiles on a folder, or ReadFromText on a CSV) --Reshuffle--> ReadImage --> RunInference
        ok ----> predictions-SSSSS-of-NNNNN.jsonl  {"image_uri", "label", "probabilities", "model", "version"}
        bad ---> errors-SSSSS-of-NNNNN.csv         image_uri,reason  (missing, unreadable, empty, not an image)

Every input lands in exactly one of the two. The listing is read inside the pipeline (no beam.Create of the
rows), so the job graph and the launcher's memory do not grow with the number of images. RunInference batches
the images for one `predict_pixels` call of the SavedModel; each image is decoded and resized first, one at a
time, by the decoder training and serving use (`decode_and_resize`), so one bad file fails only its own row.
Outputs are written to a staging folder beside --output-dir and moved into place when the run succeeds, one run
per folder at a time, replacing only the files the previous run's manifest lists (components/outputs.py): a failed
run leaves the previous predictions as they were and the user's own files are never touched.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from components import model_store, outputs, storage
from components.batch_predict.config import BATCH
from components.beam_runner import describe, runner_for
from components.contracts import MAX_FILE_BYTES, SAVED_MODEL_FILE, is_version_name
from components.errors import InputError
from components.image_files import BadImage, open_header

log = logging.getLogger(__name__)

URI_COLUMN = "image_uri"
ERROR_COLUMNS = "image_uri,reason"
PREDICTIONS_PREFIX, ERRORS_PREFIX = "predictions", "errors"
# Beam's shard names: only files with these names, listed in the folder's manifest, are ever replaced or deleted.
OUTPUT_NAMES = re.compile(rf"^({PREDICTIONS_PREFIX}-\d{{5}}-of-\d{{5}}\.jsonl|"
                          rf"{ERRORS_PREFIX}-\d{{5}}-of-\d{{5}}\.csv)$")
KIND = outputs.Kind(tool="catsdogs batch-predict", ours=OUTPUT_NAMES, claimed=OUTPUT_NAMES)
COUNTER_NAMESPACE = "catsdogs.batch_predict"
DEFAULT_BATCH_SIZE = BATCH.batch_size  # components/batch_predict/config.py


@dataclass
class ModelRef:
    """Which SavedModel scores the images, and the name and version its predictions carry."""

    path: str
    name: str
    version: int


@dataclass
class BatchSummary:
    source: str
    output_dir: str
    model: str
    version: int
    predictions: int = 0
    errors: int = 0


def resolve_model(model: str) -> ModelRef:
    """A model base (its newest usable version, by the model store's rule that serving follows too) or one
    SavedModel folder; `<base>/<N>` is version N of base."""
    model = model.rstrip("/")
    if not (storage.exists(model) and model_store.version_candidates(model)):
        raise InputError(f"--model {model}: no {SAVED_MODEL_FILE} and no numbered versions <base>/N/ there")
    found = model_store.champion(model)
    if found is None:
        raise InputError(f"--model {model}: no version there loads and answers finite numbers (see the warnings)")
    version, path, _ = found
    parent, _, base_name = model.rpartition("/")
    if path == model and is_version_name(base_name) and parent:
        return ModelRef(path, parent.rpartition("/")[2], int(base_name))
    return ModelRef(path, base_name, version)


def is_csv(source: str) -> bool:
    return source.lower().endswith(".csv")


def csv_uri_column(csv_path: str) -> int:
    """The index of the image_uri column, from the CSV's first line only: a big CSV is not read here (Beam reads
    the rest in splits; a field with a line break inside quotes is not supported)."""
    with FileSystems.open(csv_path) as f:
        first = f.readline().decode("utf-8-sig").strip()
    header = [name.strip().lower() for name in next(csv.reader([first]), [])]
    if URI_COLUMN not in header:
        raise InputError(f"CSV {csv_path} line 1: no {URI_COLUMN} column; header is {first!r}")
    return header.index(URI_COLUMN)


class ListCsv(beam.PTransform):
    """A CSV with an image_uri column -> image URIs (blank lines skipped), read by Beam in splits."""

    def __init__(self, csv_path: str, column: int):
        super().__init__()
        self.csv_path, self.column = csv_path, column

    def expand(self, pipeline):
        column = self.column
        return (
            pipeline
            | "ReadCsv" >> beam.io.ReadFromText(self.csv_path, skip_header_lines=1, validate=False)  # checked before
            | "NonBlank" >> beam.Filter(lambda line: line.strip() != "")
            | "ImageUri" >> beam.Map(lambda line: _csv_field(line, column))
        )


def _csv_field(line: str, column: int) -> str:
    values = next(csv.reader([line]), [])
    return values[column].strip() if column < len(values) else ""


class ListFolder(beam.PTransform):
    """Every file below a folder (local or gs://), at any depth: <label>/<file>, <split>/<label>/<file> or flat."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def expand(self, pipeline):
        if storage.is_gcs(self.folder):
            return (
                pipeline
                | "MatchFiles" >> fileio.MatchFiles(storage.join(self.folder, "**"))
                | "Paths" >> beam.Map(lambda metadata: metadata.path)
            )
        return pipeline | "Folder" >> beam.Create([self.folder]) | "Walk" >> beam.FlatMap(walk_local)


def walk_local(folder: str):
    """Every file name below a local folder, symlinks that lead nowhere included: Beam's MatchFiles skips a
    file it cannot stat, so such a file would land in neither the predictions nor the errors."""
    for parent, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(files):
            yield os.path.join(parent, name)


class ReadImage(beam.DoFn):
    """URI -> (URI, bytes); missing, unreadable, empty and too large files go to the "bad" output with the
    reason."""

    BAD = "bad"

    def __init__(self, max_file_bytes: int = MAX_FILE_BYTES):
        self.max_file_bytes = max_file_bytes

    def process(self, uri: str):
        if not uri:
            yield beam.pvalue.TaggedOutput(self.BAD, (uri, f"empty {URI_COLUMN}"))
            return
        try:
            data = storage.read_at_most(uri, self.max_file_bytes)
        except storage.FileTooLarge as e:
            yield beam.pvalue.TaggedOutput(self.BAD, (uri, str(e)))
            return
        except Exception as e:  # noqa: BLE001 - any filesystem failure is this image's reason
            yield beam.pvalue.TaggedOutput(self.BAD, (uri, f"cannot read file: {type(e).__name__}: {e}"))
            return
        if not data:
            yield beam.pvalue.TaggedOutput(self.BAD, (uri, "empty file"))
            return
        yield uri, data


class _LoadedModel:
    """The SavedModel's batched `predict_pixels` and the serving decoder at its input size."""

    def __init__(self, path: str):
        import tensorflow as tf

        from components.decode import decode_and_resize

        self.loaded = model_store.load_saved_model(path)  # its signatures' variables live as long as this object
        self.predict = self.loaded.signatures["predict_pixels"]
        self.size = model_store.input_size(self.loaded)
        self.classes = [c.decode() for c in self.loaded.signatures["model_info"]()["classes"].numpy()]
        size = self.size
        self.decode = tf.function(lambda image_bytes: decode_and_resize(image_bytes, size),
                                  input_signature=[tf.TensorSpec([], tf.string)])


class ImageModelHandler(ModelHandler):
    """RunInference's handler for our SavedModel: examples are (image_uri, encoded bytes).

    Beam's TFModelHandlerTensor loads models with `tf.keras.models.load_model`, which Keras 3 refuses for a
    SavedModel (and it needs tensorflow_hub); this one loads the SavedModel with `tf.saved_model.load`.
    Each result's inference is {"label", "probabilities"} or {"error": reason} for an image that does not decode.
    """

    def __init__(self, model: ModelRef, batch_size: int = DEFAULT_BATCH_SIZE):
        # A fixed batch size: BatchElements' adaptive sizing starts at 1 and averaged 6 images per model call
        # over 200 images, a third of the throughput of batches of 32.
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.model = model

    def load_model(self) -> _LoadedModel:
        return _LoadedModel(self.model.path)

    def run_inference(self, batch: Sequence[tuple[str, bytes]], model: _LoadedModel,
                      inference_args=None) -> Iterable[PredictionResult]:
        import numpy as np

        pixels, decoded, results = [], [], [None] * len(batch)
        for i, (uri, data) in enumerate(batch):
            try:
                pixels.append(_decode(model, data))
                decoded.append(i)
            except BadImage as e:
                results[i] = PredictionResult(uri, {"error": str(e)}, self.model.name)
        if pixels:
            # The model's own `labels`: its operating threshold (training's --threshold / --target-*), not argmax.
            outputs = model.predict(pixels=np.stack(pixels))
            probabilities, labels = outputs["probabilities"].numpy(), outputs["labels"].numpy()
            for i, probs, label in zip(decoded, probabilities, labels):
                by_class = {c: float(p) for c, p in zip(model.classes, probs)}
                label = label.decode()
                results[i] = PredictionResult(batch[i][0], {"label": label, "probabilities": by_class}, self.model.name)
        return results

    def get_num_bytes(self, batch: Sequence[tuple[str, bytes]]) -> int:
        return sum(len(data) for _, data in batch)

    def get_metrics_namespace(self) -> str:
        return COUNTER_NAMESPACE


def _decode(model: _LoadedModel, data: bytes):
    """Encoded bytes -> float32 [S, S, 3], as the serving server decodes a request's image; BadImage if not."""
    import tensorflow as tf

    open_header(data)  # the header only: refuses non-images and images over the pixel limit before decoding
    try:
        return model.decode(tf.constant(data)).numpy()
    except tf.errors.InvalidArgumentError as e:
        # TensorFlow's message: "{{function_node ...}} jpeg::Uncompress failed. ...\n\t [[{{node ...}}]] [Op:...]"
        message = re.sub(r"\{\{.*?\}\}\s*", "", e.message.splitlines()[0]).strip()
        raise BadImage(f"cannot decode the image: {message}") from e


def _prediction_line(result: PredictionResult, model: ModelRef) -> str:
    Metrics.counter(COUNTER_NAMESPACE, "predictions").inc()
    return json.dumps({URI_COLUMN: result.example, **result.inference, "model": model.name,
                       "version": model.version})


def _error_line(uri_reason: tuple[str, str]) -> str:
    Metrics.counter(COUNTER_NAMESPACE, "errors").inc()
    buffer = io.StringIO()
    uri, reason = uri_reason
    csv.writer(buffer, lineterminator="").writerow([uri, " ".join(reason.split())])  # one line per error
    return buffer.getvalue()


def build_pipeline(pipeline: beam.Pipeline, source: str, model: ModelRef, output_dir: str,
                   batch_size: int = DEFAULT_BATCH_SIZE, csv_column: int | None = None,
                   max_file_bytes: int = MAX_FILE_BYTES) -> None:
    """The graph: its size does not depend on the number of images (nothing but paths is in it)."""
    listing = ListCsv(source, csv_column) if csv_column is not None else ListFolder(source)
    images = (
        pipeline
        | "List" >> listing
        # Spreads the images over the workers: a folder's listing comes out of one element, a CSV's in a few.
        | "Spread" >> beam.Reshuffle()
        | "ReadImages" >> beam.ParDo(ReadImage(max_file_bytes)).with_outputs(ReadImage.BAD, main="ok")
    )
    results = images.ok | "Predict" >> RunInference(ImageModelHandler(model, batch_size))
    split = results | "Split" >> beam.Partition(lambda result, _: int("error" in result.inference), 2)
    _ = (
        split[0]
        | "PredictionLines" >> beam.Map(_prediction_line, model)
        | "WritePredictions" >> beam.io.WriteToText(storage.join(output_dir, PREDICTIONS_PREFIX),
                                                    file_name_suffix=".jsonl")
    )
    undecodable = split[1] | "Undecodable" >> beam.Map(lambda result: (result.example, result.inference["error"]))
    _ = (
        (images[ReadImage.BAD], undecodable)
        | "AllErrors" >> beam.Flatten()
        | "ErrorLines" >> beam.Map(_error_line)
        | "WriteErrors" >> beam.io.WriteToText(storage.join(output_dir, ERRORS_PREFIX), file_name_suffix=".csv",
                                               header=ERROR_COLUMNS)
    )


def _inside(path: str, folder: str) -> bool:
    """Whether path is folder or below it, whatever the spelling (relative, ./, //, symlinks, gs://a//b)."""
    if storage.is_gcs(path) != storage.is_gcs(folder):
        return False
    if storage.is_gcs(path):
        path, folder = (re.sub("/+", "/", p[len("gs://"):]).rstrip("/") + "/" for p in (path, folder))
    else:
        path, folder = (os.path.realpath(p).rstrip(os.sep) + os.sep for p in (path, folder))
    return path.startswith(folder)


def _check_paths(source: str, output_dir: str) -> None:
    if not storage.exists(source):
        raise InputError(f"SOURCE {source} does not exist")
    if not is_csv(source) and _inside(output_dir, source):
        raise InputError(f"--output-dir {output_dir} is inside SOURCE {source}: its files would be scored next time")


class _DropMessage(logging.Filter):
    """Beam 2.77's RunInference warns at every model load that the `resource` module is missing: its
    ml.inference.base imports `resource` together with a model manager that needs torch, which we do not have."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def batch_predict(source: str, model: str, output_dir: str, batch_size: int = DEFAULT_BATCH_SIZE,
                  runner: str = "DirectRunner", pipeline_args: list[str] | None = None,
                  dry_run: bool = False, max_file_bytes: int = MAX_FILE_BYTES) -> BatchSummary:
    """Scores every image of source (a folder or a CSV with an image_uri column) with the model's newest usable
    version and writes predictions-*.jsonl and errors-*.csv to output_dir. pipeline_args go to Beam as they are (e.g.
    Dataflow's options from `components.beam_runner.dataflow_args`). dry_run prints the options, steps and
    job graph size and reads no image. A file over max_file_bytes is an error row."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if max_file_bytes < 1:
        raise InputError(f"--max-file-bytes must be at least 1, got {max_file_bytes}")
    # A dry run describes the job without reading the cloud (no credentials): gs:// paths are not looked up.
    planned = dry_run and storage.is_gcs(source)
    if not planned:
        _check_paths(source, output_dir)
    target = outputs.resolve(output_dir)  # symlinks followed: staged on the target's filesystem
    if not (dry_run and storage.is_gcs(output_dir)):  # a dry run needs no credentials
        outputs.check_output_dir(target, KIND)
    column = (0 if planned else csv_uri_column(source)) if is_csv(source) else None
    if dry_run and storage.is_gcs(model):
        ref = ModelRef(model, model.rstrip("/").rpartition("/")[2], 0)  # version 0: the newest, found at run time
    else:
        ref = resolve_model(model)
    options = PipelineOptions(pipeline_args or [])
    summary = BatchSummary(source, output_dir, ref.name, ref.version)
    if dry_run:
        # A dry run builds the graph on the local runner: Dataflow's option checks already call GCS.
        pipeline = beam.Pipeline(runner=runner_for("DirectRunner"), options=options)
        build_pipeline(pipeline, source, ref, storage.join(output_dir, "staging"), batch_size, column, max_file_bytes)
        version = f"version {ref.version}" if ref.version else "its newest version"
        print(f"dry run: would score the images of {source} with {ref.name} {version} ({ref.path}) "
              f"into {output_dir} with {runner}\n{describe(pipeline, options)}")  # describe ends in the job graph
        return summary

    with outputs.locked(target, KIND):
        previous = outputs.check_output_dir(target, KIND)  # again: no other run can change it now
        outputs.clean_leftovers(target)
        staging = outputs.new_staging_dir(target, KIND)
        pipeline = beam.Pipeline(runner=runner_for(runner), options=options)
        build_pipeline(pipeline, source, ref, staging, batch_size, column, max_file_bytes)
        log.info("scoring %s with %s version %d (%s) into %s with %s", source, ref.name, ref.version, ref.path,
                 output_dir, runner)
        if runner == "DataflowRunner":
            logging.getLogger("apache_beam").setLevel(logging.INFO)  # the job's id, URL and progress
        quiet = _DropMessage("Resource module is not available")
        logging.getLogger().addFilter(quiet)
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except BaseException:
            outputs.discard(staging, KIND)  # the previous outputs stay as they were
            raise
        finally:
            logging.getLogger().removeFilter(quiet)
        outputs.commit(staging, target, previous, KIND)
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        name = counter.key.metric.name
        if name in ("predictions", "errors"):
            setattr(summary, name, getattr(summary, name) + counter.committed)
    return summary
