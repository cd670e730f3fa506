"""What `--weights` means: "" (train from scratch), a weights file (local or gs://), or "imagenet": the built-in
backbone's ImageNet weights through Keras' own mechanism, `keras.utils.get_file` into Keras' cache
(`$KERAS_HOME/models`, default `~/.keras/models`), with the file name, URL and hash Keras' applications use.

On Google Cloud the file downloads on first use. Without a network a copy already in the cache serves; with
neither, the command stops in one line saying where to put the file. A cached file is used as it is: its hash
is checked and a mismatch only warned about, so a file copied in by hand (or made by a test) is not thrown away
and re-downloaded, which is what Keras' get_file would do.
"""

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass

from components import storage
from components.errors import InputError

log = logging.getLogger(__name__)

IMAGENET = "imagenet"


@dataclass(frozen=True)
class KerasWeights:
    file_name: str  # the name in Keras' cache, as keras.applications names it
    origin: str
    file_hash: str


def _mobilenet_v3_small() -> KerasWeights:
    # The constants and the naming of keras/src/applications/mobilenet_v3.py (alpha 1.0, not minimalistic,
    # include_top=False): read from Keras, not copied, so they follow its releases.
    from keras.src.applications import mobilenet_v3

    name = "small_224_1.0_float"
    file_name = f"weights_mobilenet_v3_{name}_no_top_v2.h5"
    return KerasWeights(file_name, mobilenet_v3.BASE_WEIGHT_PATH + file_name, mobilenet_v3.WEIGHTS_HASHES[name][1])


# The architectures (components/train/models.py) whose backbone has ImageNet weights in Keras, by name.
IMAGENET_WEIGHTS = {"mobilenet_v3_small": _mobilenet_v3_small}


def keras_cache_dir() -> str:
    """Keras' download cache for weights, read now (Keras reads KERAS_HOME once, when it is imported):
    $KERAS_HOME/models, else ~/.keras/models, else /tmp/.keras/models where home is not writable (as Keras)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "models")


def check(weights: str, architecture: str, fetch: bool = True) -> None:
    """Refuses, before any work, what cannot load: ImageNet weights for an architecture without a built-in
    backbone or (fetch) that are neither cached nor downloadable now, a weights file that does not exist.
    With fetch, ImageNet weights are downloaded into Keras' cache here, so a missing network fails first."""
    if weights == IMAGENET:
        if architecture not in IMAGENET_WEIGHTS:
            raise InputError(f"--weights imagenet: {architecture} has no pretrained backbone; use it with "
                             f"{', '.join(IMAGENET_WEIGHTS)}, or give a weights file")
        if fetch:
            imagenet_path(architecture)
    elif weights and not storage.exists(weights):
        raise InputError(f"--weights {weights} does not exist")


def check_fine_tune(fine_tune_epochs: int, architecture: str, weights: str) -> None:
    """--fine-tune-epochs needs a backbone to freeze and then unfreeze (components/train/finetune.py)."""
    if fine_tune_epochs < 0:
        raise InputError(f"--fine-tune-epochs must be 0 or more, got {fine_tune_epochs}")
    if fine_tune_epochs and architecture not in IMAGENET_WEIGHTS:
        raise InputError(f"--fine-tune-epochs needs an architecture with a pretrained backbone "
                         f"({', '.join(IMAGENET_WEIGHTS)}), not {architecture}")
    if fine_tune_epochs and not weights:
        log.warning("--fine-tune-epochs without --weights: the frozen backbone is random, not pretrained")


def _hash_matches(path: str, expected: str) -> bool:
    """Keras' rule: a 64-character hash is SHA-256, a shorter one MD5."""
    digest = hashlib.sha256() if len(expected) == 64 else hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == expected


def imagenet_path(architecture: str) -> str:
    """The local ImageNet weights file of the architecture's backbone, downloaded into Keras' cache when it is
    not there yet. No cache and no network: InputError saying exactly where to put the file."""
    check(IMAGENET, architecture, fetch=False)
    spec = IMAGENET_WEIGHTS[architecture]()
    cache = keras_cache_dir()
    path = os.path.join(cache, spec.file_name)
    if os.path.exists(path):
        if not _hash_matches(path, spec.file_hash):
            log.warning("%s does not have the hash Keras publishes (%s); using it as it is", path, spec.file_hash)
        log.info("ImageNet weights for %s from Keras' cache: %s", architecture, path)
        return path
    import keras

    try:
        # get_file prints "Downloading data from ..." and a progress bar on stdout; a failure must stay one line
        with contextlib.redirect_stdout(io.StringIO()):
            path = keras.utils.get_file(spec.file_name, spec.origin, cache_subdir="models",
                                        file_hash=spec.file_hash, cache_dir=os.path.dirname(cache))
    except Exception as error:  # noqa: BLE001 - get_file raises a bare Exception("URL fetch failure ... -- REASON")
        reason = (str(error).splitlines() or [type(error).__name__])[0].rpartition(" -- ")[2]
        raise InputError(f"--weights imagenet: {spec.file_name} is not in Keras' cache and cannot be downloaded "
                         f"from {spec.origin} ({reason}): put the file at {path} (KERAS_HOME moves the cache)"
                         ) from None
    log.info("downloaded ImageNet weights for %s from %s to %s", architecture, spec.origin, path)
    return path


def local_path(weights: str, architecture: str) -> str | None:
    """A local file Keras can load for --weights (None: no weights). A gs:// file is copied to a temporary
    folder under its own name (Keras picks the loader by the name's ending)."""
    if not weights:
        return None
    if weights == IMAGENET:
        return imagenet_path(architecture)
    check(weights, architecture)
    if not storage.is_gcs(weights):
        return weights
    path = os.path.join(tempfile.mkdtemp(prefix="catsdogs-weights-"), os.path.basename(weights))
    storage.write_bytes(path, storage.read_bytes(weights))
    return path
