"""Warm-up records that travel with the SavedModel: `assets.extra/tf_serving_warmup_requests`.

TF Serving (and any server that reads them) replays these before it serves a model, so its first real request
does not pay for graph and kernel set-up; our server (components/serve/model.py) replays them too. The file is an
uncompressed TFRecord file of `tensorflow.serving.PredictionLog` protos, each holding a `predict_log.request`:

    PredictionLog { predict_log (6): PredictLog { request (1): PredictRequest {
        model_spec (1): ModelSpec { signature_name (3): "serving_default" }
        inputs (2): map entry { key (1): "image_bytes", value (2): TensorProto {
            dtype (1): DT_STRING (7), tensor_shape (2): { dim (2): { size (1): N } }, string_val (8): each image
    } } } } }

TF 2.21 ships no tensorflow_serving protos, so the wire format is written and read here by hand (it is small and
stable); tests check the TensorProto part against TensorFlow's own `tensor_pb2`. Each record holds one held-out
image (the request a client sends most).
"""

from __future__ import annotations

from dataclasses import dataclass

from components import storage
from components.protowire import field, fields, varint

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"  # inside the SavedModel folder: TF Serving's name
SIGNATURE = "serving_default"
INPUT = "image_bytes"  # the serving signature's input (components/train/export.py)
DT_STRING = 7  # tensorflow.DataType
RECORDS = 4  # held-out images written at export: a few, as TF Serving's docs advise (each one costs start-up)

# Field numbers (tensorflow_serving/apis/*.proto, tensorflow/core/framework/tensor*.proto).
_PREDICT_LOG, _REQUEST, _MODEL_SPEC, _INPUTS, _SIGNATURE_NAME = 6, 1, 1, 2, 3
_DTYPE, _TENSOR_SHAPE, _STRING_VAL, _DIM, _DIM_SIZE = 1, 2, 8, 2, 1


@dataclass(frozen=True)
class WarmupRequest:
    signature_name: str
    inputs: dict[str, list[bytes]]  # input name -> the DT_STRING tensor's values (a vector)


# --- PredictionLog ------------------------------------------------------------------------------------------


def string_tensor(values: list[bytes]) -> bytes:
    """A serialized TensorProto: a DT_STRING vector of `values`."""
    shape = field(_DIM, varint(_DIM_SIZE << 3) + varint(len(values)))
    return (varint(_DTYPE << 3) + varint(DT_STRING) + field(_TENSOR_SHAPE, shape)
            + b"".join(field(_STRING_VAL, v) for v in values))


def read_string_tensor(data: bytes) -> list[bytes]:
    """The values of a serialized DT_STRING TensorProto; ValueError for another dtype."""
    found = fields(data)
    dtype = found.get(_DTYPE, [0])[-1]
    if dtype != DT_STRING:
        raise ValueError(f"expected a DT_STRING tensor, got dtype {dtype}")
    return list(found.get(_STRING_VAL, []))


def prediction_log(inputs: dict[str, list[bytes]], signature_name: str = SIGNATURE) -> bytes:
    """A serialized PredictionLog whose predict_log.request sends `inputs` (DT_STRING vectors)."""
    spec = field(_SIGNATURE_NAME, signature_name.encode())
    entries = b"".join(field(_INPUTS, field(1, name.encode()) + field(2, string_tensor(values)))
                       for name, values in inputs.items())
    request = field(_MODEL_SPEC, spec) + entries
    return field(_PREDICT_LOG, field(_REQUEST, request))


def read_prediction_log(data: bytes) -> WarmupRequest:
    """The request of a serialized PredictionLog; ValueError when it holds no predict_log request."""
    logs = fields(data).get(_PREDICT_LOG)
    if not logs:
        raise ValueError("not a PredictionLog with a predict_log")
    requests = fields(logs[-1]).get(_REQUEST)
    if not requests:
        raise ValueError("predict_log holds no request")
    request = fields(requests[-1])
    spec = fields(request.get(_MODEL_SPEC, [b""])[-1])
    inputs = {}
    for entry in request.get(_INPUTS, []):
        pair = fields(entry)
        inputs[pair.get(1, [b""])[-1].decode()] = read_string_tensor(pair.get(2, [b""])[-1])
    return WarmupRequest(spec.get(_SIGNATURE_NAME, [b""])[-1].decode(), inputs)


# --- the file inside the SavedModel ------------------------------------------------------------------------


def warmup_path(model_dir: str) -> str:
    return storage.join(model_dir, WARMUP_FILE)


def write_warmup(model_dir: str, images: list[bytes]) -> str:
    """Writes one warm-up record per encoded image into the SavedModel in model_dir; returns the file's path."""
    import tensorflow as tf

    path = warmup_path(model_dir)
    tf.io.gfile.makedirs(storage.join(model_dir, "assets.extra"))
    with tf.io.TFRecordWriter(path) as writer:  # uncompressed: what TF Serving reads
        for image in images:
            writer.write(prediction_log({INPUT: [image]}))
    return path


def read_warmup(model_dir: str) -> list[WarmupRequest]:
    """The warm-up requests of the SavedModel in model_dir ([] when it has none)."""
    import tensorflow as tf

    path = warmup_path(model_dir)
    if not storage.exists(path):
        return []
    return [read_prediction_log(record.numpy()) for record in tf.data.TFRecordDataset(path)]

