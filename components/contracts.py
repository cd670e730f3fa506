"""The contracts every stage shares, in one dependency-free module (standard library only).

Prepare writes, conversion reads and checks, training and evaluation read, serving and deployment publish and
follow: each imports its names from here, so a split, a column, a file name or the version layout is written
once. Nothing here imports TensorFlow, Beam or pandas; the image decoder that training and serving share needs
TensorFlow and lives in `components/decode.py`; the model store (versions, publishing, the champion rule) in
`components/model_store.py`.
"""

from __future__ import annotations

# The CSV between prepare and convert: TFRecorder's columns, header required.
CSV_COLUMNS = ("split", "image_uri", "label")

# Splits, in the order they are written and reported. DISCARD rows are kept in the CSV but never converted.
TRAIN, VALIDATION, TEST, DISCARD = "TRAIN", "VALIDATION", "TEST", "DISCARD"
SPLITS = (TRAIN, VALIDATION, TEST)
CSV_SPLITS = (*SPLITS, DISCARD)
# Shard file prefixes: train-00000-of-00002.tfrecord[.gz] (TFRecorder's names).
SPLIT_PREFIX = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}
# The held-out split evaluation scores on: the first of these that has records.
HELD_OUT_SPLITS = (TEST, VALIDATION)

# The files beside the shards in a conversion's output folder.
LABELS_FILE = "labels.json"  # the ordered class names; a record's label is an index into it
SUMMARY_FILE = "summary.json"  # counts per split and label, the format, the errors

# Record schemas written by convert (see components/convert/schema.py for their features).
RECORD_FORMATS = ("jpeg", "tfrecorder")
DEFAULT_RECORD_FORMAT = "jpeg"

# A model base folder in TF Serving's layout: <base>/<version>/saved_model.pb, version a positive integer
# written without leading zeros (TF Serving reads 007 as 7; we refuse the ambiguity).
SAVED_MODEL_FILE = "saved_model.pb"
TRAINING_INFO_FILE = "training.json"  # beside the SavedModel: config, architecture, class names, history


def is_version_name(name: str) -> bool:
    """True for a version folder's name: digits, no leading zero ("1", "12"; not "007", "0", "v1")."""
    return name.isascii() and name.isdigit() and not name.startswith("0")

# The largest input file convert and batch-predict read (--max-file-bytes): far above any photo (a 60-megapixel
# JPEG is ~30 MB), so a 1.5 GB non-image or /dev/zero listed in a CSV is an error row, not the worker's memory.
MAX_FILE_BYTES = 64 * 1024 * 1024

# Request logs for drift monitoring: the server writes, `catsdogs monitor` reads. One JSON line per logged image
# ({"time", "version", "label", "probabilities"[, "embedding", "image_stats"]}) in files named
# <REQUEST_LOG_PREFIX><start time>-<pid>-<n>.jsonl. The profile's definition is components/monitor/profile.py:
# PROFILE_SIGNATURE takes encoded images (serving_default's input) and returns its outputs plus "embedding" [N, D]
# and "image_stats" [N, 5] (the evaluate step's baseline uses it); PROFILE_PIXELS_SIGNATURE takes predict_pixels'
# input and returns its outputs plus "embedding" (the server decodes, so it computes image_stats while decoding,
# with the same function).
REQUEST_LOG_PREFIX = "requests-"
PROFILE_SIGNATURE = "serving_profile"
PROFILE_PIXELS_SIGNATURE = "profile_pixels"
# The serving container's request-logging settings (`catsdogs deploy --log-requests` sets them on Vertex AI).
LOG_REQUESTS_ENV = "CATSDOGS_LOG_REQUESTS"
LOG_SAMPLE_RATE_ENV = "CATSDOGS_LOG_SAMPLE_RATE"
