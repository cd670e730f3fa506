"""Which model version is served: the newest under a TF Serving base folder, followed as versions come and go.

A poller thread lists the base folder; when the newest version changes (a new one published, or the newest
removed: a rollback) it loads and warms the new one fully before swapping it in with one assignment.
Requests take `current` once, so a request started before a swap finishes on the version it started with.
"""

from __future__ import annotations

import logging
import threading

from components import storage
from components.deploy.core import versions
from components.errors import InputError
from components.serve.model import LoadedModel

log = logging.getLogger(__name__)


def newest_version(model_base: str) -> tuple[int, str] | None:
    """(version, path) of the newest version under model_base; a bare SavedModel folder is version 1."""
    if storage.exists(storage.join(model_base, "saved_model.pb")):
        return 1, model_base
    published = versions(model_base)
    return (published[-1], storage.join(model_base, str(published[-1]))) if published else None


class VersionManager:
    def __init__(self, model_base: str, name: str, max_batch: int, poll_seconds: float):
        self.model_base = model_base
        self.name = name
        self._max_batch = max_batch
        newest = newest_version(model_base)
        if newest is None:
            raise InputError(f"{model_base} holds no saved_model.pb and no numbered versions <base>/N/")
        self.current = self._load(*newest)
        self._failed: set[int] = set()  # versions whose loading failed, to log that once
        self._empty = False  # the base had no versions at the last poll
        self._stop = threading.Event()
        self._thread = None
        is_version_base = newest[1] != model_base
        if is_version_base and poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll, args=(poll_seconds,), name="version-poller",
                                            daemon=True)
            self._thread.start()

    def _load(self, version: int, path: str) -> LoadedModel:
        log.info("loading %s version %d from %s", self.name, version, path)
        model = LoadedModel(self.name, version, path)
        model.warm_up(self._max_batch)
        return model

    def refresh(self) -> None:
        """Serves the newest version if it is not the one served; keeps the current one when loading fails."""
        newest = newest_version(self.model_base)
        if newest is None:
            if not self._empty:
                log.warning("%s holds no versions any more; still serving version %d", self.model_base,
                            self.current.version)
            self._empty = True
            return
        self._empty = False
        version, path = newest
        if version == self.current.version:
            return
        try:
            model = self._load(version, path)
        except Exception as e:  # noqa: BLE001 - a half-copied or broken version must not stop serving
            if version not in self._failed:  # say it once; a half-copied version is retried at every poll
                log.error("cannot load %s version %d (still serving %d): %s", self.name, version,
                          self.current.version, e)
                self._failed.add(version)
            return
        previous, self.current = self.current, model
        log.info("now serving %s version %d (was %d)", self.name, version, previous.version)

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - e.g. GCS briefly unreachable: try again next time
                log.exception("polling %s failed", self.model_base)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
