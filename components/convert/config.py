"""How convert writes records, written once: `catsdogs convert`'s (and `run`'s --format) flags come from
ConvertConfig; tests/test_structure.py checks that convert()'s and the convert component's literal defaults
match it (a component's signature cannot import). Dataflow's settings are components/beam_config.py's."""

from __future__ import annotations

from dataclasses import dataclass

from components.contracts import DEFAULT_RECORD_FORMAT, RECORD_FORMATS
from components.options import option

COMPRESSIONS = ("gzip", "none")


@dataclass(frozen=True)
class ConvertConfig:
    record_format: str = option(DEFAULT_RECORD_FORMAT, "jpeg: JPEG bytes (default); tfrecorder: TFRecorder's base64 "
                                                       "raw pixels", flag="--format", choices=RECORD_FORMATS)
    compression: str | None = option(None, "default: none for jpeg (JPEGs do not compress), gzip for tfrecorder",
                                     choices=COMPRESSIONS)
    num_shards: int = option(0, "shards per split; 0: one per 1000 records")
    max_error_fraction: float = option(0.05, "fail when more rows than this are bad (default %(default)s)")
    workers: int = option(1, "DirectRunner processes (default 1: one process, threads per shard use the cores)")


CONVERT = ConvertConfig()
