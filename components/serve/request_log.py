"""Request logging for drift monitoring: one JSON line per sampled image, written off the request path.

    {"time": "2026-12-04T23:50:01.123456Z", "version": "3", "label": "cats", "probabilities": [0.9, 0.1],
     "embedding": [16 floats], "image_stats": [5 floats]}

(embedding and image_stats only when the served version has the profile signature, contracts.PROFILE_SIGNATURE.)
Files are `requests-<start time>-<pid>-<n>.jsonl` under a local folder or gs:// prefix (components/storage.py);
each file is written whole, once, when it holds `rotate_records` lines or is `rotate_seconds` old, so a reader
never sees half a file (on GCS an object cannot be appended to anyway).

The request path only draws the sample and puts a small tuple into a bounded queue without waiting: when the
writer falls behind (a slow bucket) the queue fills and records are dropped and counted, never the answer
delayed. Memory is bounded by the queue and one file's lines. close() writes everything queued (the SIGTERM
drain calls it after the last answer).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import queue
import random
import threading
import time

from components import storage
from components.contracts import REQUEST_LOG_PREFIX
from components.errors import InputError

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # records waiting for the writer; beyond this they are dropped (and counted)
ROTATE_RECORDS = 10_000  # lines per file
ROTATE_SECONDS = 60.0  # a file is written at least this often while records arrive


def parse_sample_rate(value: float | str, source: str = "--log-sample-rate") -> float:
    try:
        rate = float(value)
    except ValueError:
        raise InputError(f"{source} must be a number in (0, 1], got {value!r}") from None
    if not 0 < rate <= 1:
        raise InputError(f"{source} must be in (0, 1], got {value}")
    return rate


class RequestLog:
    def __init__(self, folder: str, sample_rate: float = 1.0, *, max_queued: int = MAX_QUEUED,
                 rotate_records: int = ROTATE_RECORDS, rotate_seconds: float = ROTATE_SECONDS):
        if max_queued < 1:
            raise InputError(f"--log-buffer must be at least 1 record, got {max_queued}")
        self.folder = folder.rstrip("/") if storage.is_gcs(folder) else folder
        self.sample_rate = parse_sample_rate(sample_rate)
        self.rotate_records, self.rotate_seconds = rotate_records, rotate_seconds
        self.sampled = 0  # images drawn into the sample
        self.dropped = 0  # of those, dropped because the queue was full
        self.written = 0  # records in files written
        self.files = 0
        self.failed_writes = 0  # files that could not be written (their records are counted in `lost`)
        self.lost = 0
        self._started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        self._random = random.Random()
        self._queue: queue.Queue = queue.Queue(max_queued)
        self._lock = threading.Lock()  # the counters, from many decode threads
        if not storage.is_gcs(self.folder):
            try:
                os.makedirs(self.folder, exist_ok=True)
            except OSError as e:
                raise InputError(f"--log-requests {folder}: cannot create the folder: {e.strerror}") from e
        self._thread = threading.Thread(target=self._write_loop, name="request-log", daemon=True)
        self._thread.start()

    def stats(self) -> dict:
        return {"folder": self.folder, "sample_rate": self.sample_rate, "sampled": self.sampled,
                "written": self.written, "dropped": self.dropped, "lost": self.lost, "files": self.files,
                "queued": self._queue.qsize()}

    def add(self, version: int, predictions) -> None:
        """Samples one request's predictions and queues the chosen images' records; never waits."""
        chosen = range(len(predictions.labels))
        if self.sample_rate < 1:
            chosen = [i for i in chosen if self._random.random() < self.sample_rate]
        if not chosen:
            return
        now = time.time()
        dropped = 0
        for i in chosen:
            row = (now, version, predictions.labels[i], predictions.probabilities[i],
                   None if predictions.embedding is None else predictions.embedding[i],
                   None if predictions.image_stats is None else predictions.image_stats[i])
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                dropped += 1
        with self._lock:
            self.sampled += len(chosen)
            self.dropped += dropped

    def close(self) -> dict:
        """Writes everything queued and stops the writer; the final stats."""
        self._queue.put(None)  # waits for room: every record queued before it is written
        self._thread.join()
        return self.stats()

    def _write_loop(self) -> None:
        lines: list[str] = []
        opened = time.monotonic()
        while True:
            timeout = max(0.0, opened + self.rotate_seconds - time.monotonic()) if lines else None
            try:
                row = self._queue.get(timeout=timeout)
            except queue.Empty:
                row = ()
            if row is None:
                break
            if row:
                if not lines:
                    opened = time.monotonic()
                lines.append(_line(row))
            if lines and (len(lines) >= self.rotate_records or time.monotonic() - opened >= self.rotate_seconds):
                self._write(lines)
                lines = []
        if lines:
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        name = f"{REQUEST_LOG_PREFIX}{self._started}-{os.getpid()}-{self.files + self.failed_writes:05d}.jsonl"
        path = storage.join(self.folder, name)
        data = "".join(lines).encode()
        try:
            if storage.is_gcs(path):
                storage.write_bytes(path, data)  # an object appears whole
            else:
                with open(path + ".part", "wb") as f:
                    f.write(data)
                os.replace(path + ".part", path)  # a reader sees the whole file or none
        except Exception as e:  # noqa: BLE001 - a full disk or an unreachable bucket must not stop serving
            self.failed_writes += 1
            self.lost += len(lines)
            log.error("request log: cannot write %s (%d records lost): %s", path, len(lines), e)
            return
        self.files += 1
        self.written += len(lines)


def _line(row: tuple) -> str:
    when, version, label, probabilities, embedding, image_stats = row
    record = {"time": datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat().replace("+00:00", "Z"),
              "version": str(version), "label": label, "probabilities": _floats(probabilities)}
    if embedding is not None:
        record["embedding"] = _floats(embedding)
    if image_stats is not None:
        record["image_stats"] = _floats(image_stats)
    return json.dumps(record) + "\n"


def _floats(values) -> list[float | None]:
    """Rounded to 6 digits (float32 holds about 7); NaN and infinity, which JSON lacks, as null. `values` is a
    row of a model output (numpy): tolist() first, as per-element numpy scalars cost several times more."""
    return [round(v, 6) if math.isfinite(v) else None for v in values.tolist()]
