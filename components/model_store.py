"""The model store: a model base folder in TF Serving's layout, `<base>/<version>/saved_model.pb` (a positive
integer without leading zeros, `contracts.is_version_name`), where each deploy adds the next version (like AI
Platform's model versions v1, v2 ...), with `training.json` beside each SavedModel.

One rule says which version is the champion, for serving, evaluation (the version a candidate must beat) and
batch prediction alike: the newest version that loads and answers finite numbers. A version that fails that (a
half-copied folder, a broken file, a diverged model an older release published) is named in one warning and
skipped, so one bad folder never blocks serving, retraining or scoring.

TensorFlow is imported inside the functions that load a model: listing and publishing versions need none.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from typing import TypeVar

from components import storage
from components.contracts import SAVED_MODEL_FILE, TRAINING_INFO_FILE, is_version_name
from components.errors import InputError

log = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")
# The probe a version must answer with finite numbers: one mid-grey image (a diverged model's NaN weights give
# NaN for every input).
PROBE_GREY = 128.0


class UnusableVersion(Exception):
    """A version that loads but cannot be used: it answers NaN or infinity."""


def versions(model_base: str) -> list[int]:
    """The published version numbers under model_base, ascending (folders holding a saved_model.pb, named
    without leading zeros: `007` is not a version)."""
    found = []
    for name in storage.list_dir(model_base):
        if is_version_name(name) and storage.exists(storage.join(model_base, name, SAVED_MODEL_FILE)):
            found.append(int(name))
    return sorted(found)


def version_candidates(model_base: str) -> list[tuple[int, str]]:
    """(version, path) of every version under model_base, newest first; a bare SavedModel folder is version 1."""
    if storage.exists(storage.join(model_base, SAVED_MODEL_FILE)):
        return [(1, model_base)]
    return [(v, storage.join(model_base, str(v))) for v in reversed(versions(model_base))]


def newest_version(model_base: str) -> tuple[int, str] | None:
    """(version, path) of the newest version under model_base, loadable or not; a bare SavedModel folder is 1."""
    candidates = version_candidates(model_base)
    return candidates[0] if candidates else None


def publish_version(model_dir: str, model_base: str) -> int:
    """Copies the SavedModel in model_dir to model_base/<next version> and returns that version.

    Locally the copy is staged beside the target and renamed into place; on gs:// saved_model.pb is copied
    last. Either way a server polling model_base never sees a half-written version.
    """
    if not storage.exists(storage.join(model_dir, SAVED_MODEL_FILE)):
        raise InputError(f"{model_dir} holds no saved_model.pb: is it the output of `catsdogs train`?")
    # Past every version-named folder, complete or not: a partial one (a killed copy, someone's own files) is
    # neither written into nor deleted, and a server never takes it for a version (it has no saved_model.pb).
    taken = [int(name) for name in storage.list_dir(model_base) if is_version_name(name)]
    partial = sorted(set(taken) - set(versions(model_base)))
    if partial:
        log.warning("skipping version folders without a saved_model.pb under %s: %s", model_base, partial)
    version = max(taken, default=0) + 1
    target = storage.join(model_base, str(version))
    if storage.is_gcs(target):
        # No rename on GCS: a server polling model_base sees a version once its saved_model.pb exists.
        storage.copy_tree(model_dir, target, last=SAVED_MODEL_FILE)
    else:
        os.makedirs(model_base, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{version}-", dir=model_base)
        storage.copy_tree(model_dir, staging)
        os.rename(staging, target)
    log.info("published %s as version %d at %s", model_dir, version, target)
    return version


def write_training_info(model_dir: str, info: dict) -> None:
    """training.json beside the SavedModel: config, architecture, class names, per-epoch history."""
    storage.write_text(storage.join(model_dir, TRAINING_INFO_FILE), json.dumps(info, indent=1))


def training_info(model_dir: str) -> dict:
    path = storage.join(model_dir, TRAINING_INFO_FILE)
    if not storage.exists(path):
        raise InputError(f"{path} not found: is {model_dir} the output of `catsdogs train`?")
    return json.loads(storage.read_text(path))


def load_saved_model(path: str):
    """tf.saved_model.load, through a local copy for gs:// (one download, and no dependence on TensorFlow's own
    GCS filesystem and its credentials)."""
    import shutil

    import tensorflow as tf

    if not storage.is_gcs(path):
        return tf.saved_model.load(path)
    local = tempfile.mkdtemp(prefix="catsdogs-model-")
    try:
        storage.copy_tree(path, local)
        return tf.saved_model.load(local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def input_size(loaded) -> int:
    """The side S of the [S, S] that the SavedModel resizes every image to (its model_info signature)."""
    if "model_info" not in loaded.signatures:
        raise InputError("the SavedModel has no model_info signature: was it exported by `catsdogs train`?")
    return int(loaded.signatures["model_info"]()["image_size"])


def probe_pixels(size: int):
    """The probe's float32 pixels [1, size, size, 3]."""
    import numpy as np

    return np.full((1, size, size, 3), PROBE_GREY, np.float32)


def check_answers(probabilities) -> None:
    """UnusableVersion unless every probability is a finite number."""
    import numpy as np

    if not np.isfinite(probabilities).all():
        raise UnusableVersion("it answers NaN or infinity (a diverged training run)")


def load_checked(path: str):
    """The loaded SavedModel at path, once it has answered the probe with finite numbers."""
    loaded = load_saved_model(path)
    predict = loaded.signatures["predict_pixels"]
    check_answers(predict(pixels=probe_pixels(input_size(loaded)))["probabilities"].numpy())
    return loaded


def one_line(error: BaseException) -> str:
    """An exception as one short line (TensorFlow's messages run over many)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def champion(model_base: str, load: Callable[[str], Loaded] = load_checked) -> tuple[int, str, Loaded] | None:
    """The newest usable version under model_base (or model_base itself when it is a SavedModel folder):
    (version, path, what `load` returned for it). `load` raises for a version that is not usable (default: it
    must load and answer the probe with finite numbers); each such version is named in one warning and skipped.
    None when no version is usable or there is none."""
    for version, path in version_candidates(model_base):
        try:
            return version, path, load(path)
        except Exception as e:  # noqa: BLE001 - whatever breaks a version, the rule is to skip it
            log.warning("skipping version %d at %s: %s", version, path, one_line(e))
    return None
