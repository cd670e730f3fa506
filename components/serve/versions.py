"""Which model version is served: the newest *loadable* one under a TF Serving base folder, followed as versions
come and go.

A poller thread lists the base folder. The served version is the newest one that loads and answers finite numbers
(the model store's rule, `components/model_store.py`): a new version is loaded
and warmed fully before it is swapped in with one assignment; when the served version disappears, the newest
loadable version left takes its place (a rollback), skipping broken ones. A version that failed to load is not
tried again until its files change (their names, sizes and modification times), so a broken folder costs one
load, not one per poll. Requests take `current` once, so a request started before a swap finishes on the
version it started with.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable

from components import storage
from components.errors import InputError
from components.model_store import version_candidates
from components.serve.model import LoadedModel

log = logging.getLogger(__name__)


def files_signature(path: str) -> tuple:
    """The names, sizes and modification times (GCS: generations) of every file below path: it changes when
    the folder's content does."""
    if storage.is_gcs(path):
        bucket, prefix = storage._split_gcs(path)  # noqa: SLF001 - the listing with sizes is what we need here
        blobs = storage._gcs_client().list_blobs(bucket, prefix=prefix.rstrip("/") + "/")  # noqa: SLF001
        return tuple(sorted((b.name, b.size, b.generation) for b in blobs))
    found = []
    for folder, _, files in os.walk(path):
        for name in files:
            file = os.path.join(folder, name)
            try:
                stat = os.stat(file)
            except OSError:  # removed while we looked: the next poll sees the new state
                continue
            found.append((os.path.relpath(file, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


class VersionManager:
    def __init__(self, model_base: str, name: str, max_batch: int, poll_seconds: float, profile: bool = False):
        self.model_base = model_base
        self._profile = profile  # load each version's profile signature when it has one (request logging)
        self.name = name
        self._max_batch = max_batch
        self._failed: dict[int, tuple] = {}  # version -> signature of its files when loading failed
        self.load_attempts: collections.Counter[int] = collections.Counter()
        self.polls = 0
        self._empty = False  # the base had no versions at the last poll
        self._orphaned: int | None = None  # the served version, gone, was reported
        candidates = version_candidates(model_base)
        if not candidates:
            raise InputError(f"{model_base} holds no saved_model.pb and no numbered versions <base>/N/ "
                             "(N without leading zeros)")
        self.current: LoadedModel | None = None
        self._retired: LoadedModel | None = None  # the version swapped out, released at the next poll
        # Called with a loaded, warmed version before it is swapped in (the server sends it its warm-up requests).
        self.before_swap: Callable[[LoadedModel], None] | None = None
        self._load_newest(candidates)
        if self.current is None:
            tried = ", ".join(str(v) for v, _ in candidates)
            raise InputError(f"no version under {model_base} could be loaded (tried {tried}; see the log)")
        self._stop = threading.Event()
        self._thread = None
        is_version_base = candidates[0][1] != model_base
        if is_version_base and poll_seconds > 0:
            self._thread = threading.Thread(target=self._poll, args=(poll_seconds,), name="version-poller",
                                            daemon=True)
            self._thread.start()

    def _load(self, version: int, path: str) -> LoadedModel:
        log.info("loading %s version %d from %s", self.name, version, path)
        self.load_attempts[version] += 1
        model = LoadedModel(self.name, version, path, profile=self._profile)
        model.warm_up(self._max_batch)
        return model

    def _load_newest(self, candidates: list[tuple[int, str]]) -> None:
        """Swaps in the newest candidate that loads, unless the served version is newer than every one that does."""
        for version, path in candidates:
            if self.current is not None and version == self.current.version:
                return  # the served version is still there, and nothing newer loads
            signature = files_signature(path)
            if self._failed.get(version) == signature:
                continue  # failed before, and its files have not changed since
            try:
                model = self._load(version, path)
            except Exception as e:  # noqa: BLE001 - a half-copied or broken version must not stop serving
                self._failed[version] = signature
                serving = f"still serving {self.current.version}" if self.current else "trying older versions"
                log.error("cannot load %s version %d (%s; tried again when its files change): %s",
                          self.name, version, serving, e)
                continue
            self._failed.pop(version, None)
            if self.before_swap is not None:
                self.before_swap(model)
            previous, self.current = self.current, model
            if previous is not None:
                log.info("now serving %s version %d (was %d)", self.name, version, previous.version)
            # Freeing a version (its graphs and variables) takes tens of milliseconds of the interpreter: done
            # right at the swap it landed on the new version's first requests, so it waits for the next poll.
            self._retired = previous
            return
        if self.current is not None and self._orphaned != self.current.version:
            self._orphaned = self.current.version  # said once, not at every poll
            log.warning("%s version %d is gone and no other version loads; still serving it",
                        self.name, self.current.version)

    def refresh(self) -> None:
        """Serves the newest loadable version; keeps the current one when none is newer or none loads."""
        self.polls += 1
        self._retired = None
        candidates = version_candidates(self.model_base)
        if not candidates:
            if not self._empty:
                log.warning("%s holds no versions any more; still serving version %d", self.model_base,
                            self.current.version)
            self._empty = True
            return
        self._empty = False
        listed = {version for version, _ in candidates}
        self._failed = {v: s for v, s in self._failed.items() if v in listed}
        if candidates[0][0] == self.current.version:
            return  # the common case, one listing per poll
        self._load_newest(candidates)

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.refresh()
            except Exception:  # e.g. GCS briefly unreachable: try again next time
                log.exception("polling %s failed", self.model_base)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
