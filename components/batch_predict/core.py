"""The Beam pipeline behind `catsdogs batch-predict`: a folder or CSV of images -> predictions and errors.

    listing (MatchFiles on a folder, or ReadFromText on a CSV) --Reshuffle--> ReadImage --> RunInference
        ok ----> predictions-SSSSS-of-NNNNN.jsonl  {"image_uri", "label", "probabilities", "model", "version"}
        bad ---> errors-SSSSS-of-NNNNN.csv         image_uri,reason  (missing, unreadable, empty, not an image)

Every input lands in exactly one of the two. The listing is read inside the pipeline (no beam.Create of the
rows), so the job graph and the launcher's memory do not grow with the number of images. RunInference batches
the images for one `predict_pixels` call of the SavedModel; each image is decoded and resized first, one at a
time, by the decoder training and serving use (`decode_and_resize`), so one bad file fails only its own row.
Outputs are written to a staging folder and moved into place when the run succeeds: a failed run leaves the
previous predictions as they were.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from components import storage
from components.contracts import SAVED_MODEL_FILE, is_version_name
from components.errors import InputError

log = logging.getLogger(__name__)

URI_COLUMN = "image_uri"
ERROR_COLUMNS = "image_uri,reason"
PREDICTIONS_PREFIX, ERRORS_PREFIX = "predictions", "errors"
OUTPUT_PATTERNS = (f"{PREDICTIONS_PREFIX}-*-of-*.jsonl", f"{ERRORS_PREFIX}-*-of-*.csv")
COUNTER_NAMESPACE = "catsdogs.batch_predict"
DEFAULT_BATCH_SIZE = 32
# The serving server's limit: a small compressed file can declare a huge image (see components/serve/model.py).
MAX_IMAGE_PIXELS = 40_000_000


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
    """A model base (its newest numbered version) or one SavedModel folder; `<base>/<N>` is version N of base."""
    from components.serve.versions import newest_version

    model = model.rstrip("/")
    newest = newest_version(model) if storage.exists(model) else None
    if newest is None:
        raise InputError(f"--model {model}: no {SAVED_MODEL_FILE} and no numbered versions <base>/N/ there")
    version, path = newest
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
        return (
            pipeline
            | "MatchFiles" >> fileio.MatchFiles(storage.join(self.folder, "**"))
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
        )


class ReadImage(beam.DoFn):
    """URI -> (URI, bytes); missing, unreadable and empty files go to the "bad" output with the reason."""

    BAD = "bad"

    def process(self, uri: str):
        if not uri:
            yield beam.pvalue.TaggedOutput(self.BAD, (uri, f"empty {URI_COLUMN}"))
            return
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                data = f.read()
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
        from components.serve.model import input_size, load_saved_model

        self.loaded = load_saved_model(path)  # its signatures' variables live as long as this object
        self.predict = self.loaded.signatures["predict_pixels"]
        self.size = input_size(self.loaded)
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
            probabilities = model.predict(pixels=np.stack(pixels))["probabilities"].numpy()
            for i, probs in zip(decoded, probabilities):
                by_class = {c: float(p) for c, p in zip(model.classes, probs)}
                label = model.classes[int(np.argmax(probs))]
                results[i] = PredictionResult(batch[i][0], {"label": label, "probabilities": by_class}, self.model.name)
        return results

    def get_num_bytes(self, batch: Sequence[tuple[str, bytes]]) -> int:
        return sum(len(data) for _, data in batch)

    def get_metrics_namespace(self) -> str:
        return COUNTER_NAMESPACE


class BadImage(Exception):
    pass


def _decode(model: _LoadedModel, data: bytes):
    """Encoded bytes -> float32 [S, S, 3], as the serving server decodes a request's image; BadImage if not."""
    import tensorflow as tf
    from PIL import Image, UnidentifiedImageError

    try:
        width, height = Image.open(io.BytesIO(data)).size  # the header only
    except Image.DecompressionBombError as e:
        raise BadImage(f"image over the {MAX_IMAGE_PIXELS}-pixel limit") from e
    except (UnidentifiedImageError, OSError) as e:
        raise BadImage("not a decodable image (JPEG, PNG, GIF or BMP)") from e
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage(f"image of {width}x{height} is over the {MAX_IMAGE_PIXELS}-pixel limit")
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
                   batch_size: int = DEFAULT_BATCH_SIZE, csv_column: int | None = None) -> None:
    """The graph: its size does not depend on the number of images (nothing but paths is in it)."""
    listing = ListCsv(source, csv_column) if csv_column is not None else ListFolder(source)
    images = (
        pipeline
        | "List" >> listing
        # Spreads the images over the workers: a folder's listing comes out of one element, a CSV's in a few.
        | "Spread" >> beam.Reshuffle()
        | "ReadImages" >> beam.ParDo(ReadImage()).with_outputs(ReadImage.BAD, main="ok")
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


def job_graph_bytes(pipeline: beam.Pipeline) -> int:
    """The size of the pipeline's portable proto: what grows if rows were put into the graph."""
    return len(pipeline.to_runner_api().SerializeToString())


def _matches(folder: str, patterns: Sequence[str]) -> list[str]:
    results = FileSystems.match([storage.join(folder, p) for p in patterns])
    return [m.path for result in results for m in result.metadata_list]


def _publish(staging: str, output_dir: str) -> None:
    """Replaces the previous run's predictions and errors with this run's (and nothing else in output_dir): the
    new files are moved in first (over old ones of the same name), then old shards the new run did not write are
    deleted, so output_dir never holds no predictions."""
    new = _matches(staging, OUTPUT_PATTERNS)
    old = _matches(output_dir, OUTPUT_PATTERNS)
    targets = [storage.join(output_dir, path.rsplit("/", 1)[-1]) for path in new]
    FileSystems.rename(new, targets)
    stale = sorted(set(old) - set(targets))
    if stale:
        FileSystems.delete(stale)


def _remove(folder: str) -> None:
    """Deletes the staging folder (whatever a failed run left in it)."""
    if storage.is_gcs(folder):
        leftovers = _matches(folder, ["**"])
        if leftovers:
            FileSystems.delete(leftovers)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def _check_paths(source: str, output_dir: str) -> None:
    if not storage.exists(source):
        raise InputError(f"SOURCE {source} does not exist")
    source_folder = source.rstrip("/") + "/"
    if not is_csv(source) and (output_dir.rstrip("/") + "/").startswith(source_folder):
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
                  dry_run: bool = False) -> BatchSummary:
    """Scores every image of source (a folder or a CSV with an image_uri column) with the model's newest version
    and writes predictions-*.jsonl and errors-*.csv to output_dir. pipeline_args go to Beam as they are (e.g.
    Dataflow's options from `components.convert.pipeline.dataflow_args`). dry_run prints the options, steps and
    job graph size and reads no image."""
    from components.convert.pipeline import _runner, describe

    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    # A dry run describes the job without reading the cloud (no credentials): gs:// paths are not looked up.
    planned = dry_run and storage.is_gcs(source)
    if not planned:
        _check_paths(source, output_dir)
    column = (0 if planned else csv_uri_column(source)) if is_csv(source) else None
    if dry_run and storage.is_gcs(model):
        ref = ModelRef(model, model.rstrip("/").rpartition("/")[2], 0)  # version 0: the newest, found at run time
    else:
        ref = resolve_model(model)
    staging = storage.join(output_dir, f".staging-{uuid.uuid4().hex[:12]}")
    options = PipelineOptions(pipeline_args or [])
    # A dry run builds the graph on the local runner: Dataflow's option checks already call GCS.
    pipeline = beam.Pipeline(runner=_runner("DirectRunner" if dry_run else runner), options=options)
    build_pipeline(pipeline, source, ref, staging, batch_size, column)
    summary = BatchSummary(source, output_dir, ref.name, ref.version)
    if dry_run:
        version = f"version {ref.version}" if ref.version else "its newest version"
        print(f"dry run: would score the images of {source} with {ref.name} {version} ({ref.path}) "
              f"into {output_dir} with {runner}\n{describe(pipeline, options)}")  # describe ends in the job graph
        return summary

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
        _remove(staging)  # the previous outputs stay as they were
        raise
    finally:
        logging.getLogger().removeFilter(quiet)
    try:
        _publish(staging, output_dir)
    except Exception as e:
        raise InputError(f"the predictions were written to {staging} but could not be moved to {output_dir}: "
                         f"{type(e).__name__}: {e}") from e
    _remove(staging)
    for counter in result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]:
        name = counter.key.metric.name
        if name in ("predictions", "errors"):
            setattr(summary, name, getattr(summary, name) + counter.committed)
    return summary
