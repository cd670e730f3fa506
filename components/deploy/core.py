"""Local deployment: a model base folder in TF Serving's layout, `<base>/<version>/saved_model.pb`,
where each deploy adds the next version number (like AI Platform's model versions v1, v2 ...)."""

from __future__ import annotations

import logging
import os
import tempfile

from components import storage
from components.contracts import is_version_name
from components.errors import InputError

log = logging.getLogger(__name__)


def versions(model_base: str) -> list[int]:
    """The published version numbers under model_base, ascending (folders holding a saved_model.pb, named
    without leading zeros: `007` is not a version)."""
    found = []
    for name in storage.list_dir(model_base):
        if is_version_name(name) and storage.exists(storage.join(model_base, name, "saved_model.pb")):
            found.append(int(name))
    return sorted(found)


def publish_version(model_dir: str, model_base: str) -> int:
    """Copies the SavedModel in model_dir to model_base/<next version> and returns that version.

    Locally the copy is staged beside the target and renamed into place; on gs:// saved_model.pb is copied
    last. Either way a server polling model_base never sees a half-written version.
    """
    if not storage.exists(storage.join(model_dir, "saved_model.pb")):
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
        storage.copy_tree(model_dir, target, last="saved_model.pb")
    else:
        os.makedirs(model_base, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{version}-", dir=model_base)
        storage.copy_tree(model_dir, staging)
        os.rename(staging, target)
    log.info("published %s as version %d at %s", model_dir, version, target)
    return version
