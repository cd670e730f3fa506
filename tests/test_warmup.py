"""Warm-up records in the SavedModel (`assets.extra/tf_serving_warmup_requests`): their hand-encoded protobuf
against TensorFlow's own protos, written by training from held-out images, replayed by `catsdogs serve` at start
and on a hot swap."""

import io
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from components import warmup
from tests.conftest import export_tiny_model


def _jpeg(seed: int, size=(30, 20)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def test_a_prediction_log_round_trips():
    images = [_jpeg(0), b"", bytes(range(256)) * 3]  # an empty value, and bytes that look like protobuf keys
    record = warmup.prediction_log({"image_bytes": images, "other": [b"x"]})
    request = warmup.read_prediction_log(record)
    assert request.signature_name == "serving_default"
    assert request.inputs == {"image_bytes": images, "other": [b"x"]}


def test_the_tensor_is_what_tensorflow_parses_as_a_string_vector():
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2, types_pb2

    images = [_jpeg(1), _jpeg(2, (5, 7))]
    proto = tensor_pb2.TensorProto.FromString(warmup.string_tensor(images))
    assert proto.dtype == types_pb2.DT_STRING
    assert [d.size for d in proto.tensor_shape.dim] == [2]
    assert list(tf.make_ndarray(proto)) == images
    # and the other way: TensorFlow's own serialization reads back
    assert warmup.read_string_tensor(tf.make_tensor_proto(images).SerializeToString()) == images


def test_the_prediction_log_nests_the_tensor_where_tf_serving_reads_it():
    """PredictionLog.predict_log (6) -> PredictLog.request (1) -> PredictRequest.inputs (2) map entry -> value (2),
    walked field by field; TensorFlow's own TensorProto parser reads the innermost message."""
    from tensorflow.core.framework import tensor_pb2

    record = warmup.prediction_log({"image_bytes": [b"abc"]})
    from components.protowire import fields  # the wire reader is what walks the path
    request = fields(fields(fields(record)[6][0])[1][0])
    assert fields(request[1][0])[3] == [b"serving_default"]  # ModelSpec.signature_name
    entry = fields(request[2][0])
    assert entry[1] == [b"image_bytes"]
    assert list(tensor_pb2.TensorProto.FromString(entry[2][0]).string_val) == [b"abc"]


def test_a_record_that_is_not_a_prediction_log_is_refused():
    with pytest.raises(ValueError, match="PredictionLog"):
        warmup.read_prediction_log(warmup.string_tensor([b"abc"]))
    with pytest.raises(ValueError, match="truncated"):
        warmup.read_prediction_log(warmup.prediction_log({"image_bytes": [b"abc"]})[:-2])


def test_training_writes_held_out_images_as_warmup_records(trained_model, records):
    requests = warmup.read_warmup(trained_model)
    assert len(requests) == warmup.RECORDS
    from components.train.data import held_out_images

    held_out = held_out_images(records, warmup.RECORDS)
    assert [r.inputs["image_bytes"] for r in requests] == [[image] for image in held_out]
    assert all(r.signature_name == "serving_default" for r in requests)


def _wait_for_line(path: str, text: str, process: subprocess.Popen) -> str:
    while True:  # no timing assertion: pytest's own timeout (or the run's) ends a hang
        log = open(path).read()
        if text in log:
            return log
        assert process.poll() is None, log[-3000:]
        time.sleep(0.1)


def test_serve_replays_the_records_at_start_and_on_a_hot_swap(tmp_path):
    base = tmp_path / "catsdogs"  # the model name
    first = export_tiny_model(str(base / "1"), [0.02, -0.01, 0.005])
    warmup.write_warmup(first, [_jpeg(3), _jpeg(4, (64, 48)), _jpeg(5)])
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", str(base), "--port", "0",
                                    "--poll-seconds", "0.1"], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        _wait_for_line(str(log_path), "\nserving catsdogs version 1", process)
        text = open(log_path).read()
        assert re.search(r"catsdogs version 1 \(.*\): 3 warm-up records replayed", text), text[-3000:]
        # A hot swap: the new version's own records are replayed before it is served.
        staging = export_tiny_model(str(tmp_path / "staging"), [0.01, 0.01, 0.01])
        warmup.write_warmup(staging, [_jpeg(6)])
        os.rename(staging, base / "2")
        text = _wait_for_line(str(log_path), "now serving catsdogs version 2", process)
        assert re.search(r"catsdogs version 2 \(.*\): 1 warm-up records replayed", text), text[-3000:]
    finally:
        process.terminate()
        process.wait()


def test_a_damaged_warmup_file_falls_back_to_the_blank_image_and_the_version_is_served(tmp_path, caplog):
    from components.serve.server import make_server

    base = tmp_path / "catsdogs"
    model = export_tiny_model(str(base / "1"), [0.02, -0.01, 0.005])
    os.makedirs(os.path.join(model, "assets.extra"))
    with open(warmup.warmup_path(model), "wb") as f:
        f.write(b"not a TFRecord file")
    server = make_server(str(base), "127.0.0.1", 0, poll_seconds=0)
    try:
        assert server.model.version == 1 and server.model.warmup_replayed == 0
        assert len(server.model.warmup_bodies) == 1  # the blank image, sent through the request path
        assert "cannot read its warm-up records" in caplog.text
    finally:
        server.server_close()
