"""TFRecord shards of `catsdogs convert`: `<split>-SSSSS-of-NNNNN.tfrecord[.gz]`, one Beam element per shard.

Images are read, checked and encoded inside the shard writer, so no PCollection ever holds image bytes (a runner
buffers PCollections between stages: the local FnApiRunner in memory). Each image goes to a stable shard
(`schema.shard_of`), so the same CSV gives the same files on every runner.

Why not Beam's stock `WriteToTFRecord` (`python benchmarks/convert.py --writers`: the same checked rows and the same
8-thread image reads feed both writers, each run in a fresh process, best of 2, jpeg, 2 cores under load 10-16,
2026-12-05): at 1,000 images it ran at 0.76x our writer's speed, peak RSS 352 vs 227 MiB; at 20,000 at 0.65x,
2,637 vs 239 MiB. A fixed shard count makes it group every encoded record by a round-robin key, so image bytes
pass through a GroupByKey (the FnApiRunner buffers it in memory: memory grows with the images) and an image's
shard changes from run to run. Ours frames records with Beam's `_TFRecordUtil` (the format's one implementation
in Beam; a private name, pinned by requirements.lock and covered by the tests that read shards back).
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

from components import storage
from components.contracts import MAX_FILE_BYTES
from components.convert import schema
from components.convert.images import to_rgb_jpeg, to_rgb_pixels
from components.convert.schema import shard_of
from components.convert.transforms import BAD, FACTS, Row, bad_row, count, csv_line
from components.image_facts import Facts, image_facts
from components.image_files import BadImage

log = logging.getLogger(__name__)

# Threads per shard writer: reads (GCS latency) and decodes overlap, and Pillow and zlib release the GIL. Locally
# on 2 busy cores 8 threads vs 1: 1522 vs 1435 img/s (jpeg, 2000 images); TFRecorder's format is bound by deflate
# (~15-30 ms per record), which only threads spread over the cores.
IMAGE_THREADS = 8


def shard_name(split: str, index: int, shards: int, gzip: bool) -> str:
    return f"{schema.SPLIT_PREFIX[split]}-{index:05d}-of-{shards:05d}.tfrecord" + (".gz" if gzip else "")


class ShardFile:
    """A TFRecord file written record by record, optionally as gzip. Records are framed and deflated by
    `encode` in the image threads (zlib releases the GIL): each is an independent deflate chunk ending in a
    sync flush, and the chunks concatenate into one gzip member (pigz's method). Deflating one TFRecorder
    record (360 KB of base64 pixels) takes ~14 ms, so a single compressing thread capped that format at ~70 img/s.
    """

    GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, unknown OS
    FINAL_BLOCK = b"\x03\x00"  # an empty final fixed-Huffman block ends the deflate stream

    def __init__(self, path: str, gzip: bool):
        self.gzip, self.crc, self.size = gzip, 0, 0
        self.file = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        if gzip:
            self.file.write(self.GZIP_HEADER)

    @staticmethod
    def encode(record: bytes, gzip: bool) -> tuple[bytes, bytes]:
        """(the TFRecord-framed record, what goes into the file)."""
        framed = io.BytesIO()
        _TFRecordUtil.write_record(framed, record)  # length, masked CRC32C of it, data, masked CRC32C of data
        framed = framed.getvalue()
        if not gzip:
            return framed, framed
        deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # level 6: what Beam's gzip writer uses
        return framed, deflate.compress(framed) + deflate.flush(zlib.Z_SYNC_FLUSH)

    def write(self, encoded: tuple[bytes, bytes]) -> None:
        framed, data = encoded
        if self.gzip:
            self.crc, self.size = zlib.crc32(framed, self.crc), self.size + len(framed)
        self.file.write(data)

    def close(self) -> None:
        if self.gzip:
            self.file.write(self.FINAL_BLOCK + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))
        self.file.close()


@dataclass
class Image:
    """One row's image after `read_image`: its serialized tf.train.Example, or the reason it cannot be used."""

    row: Row
    example: bytes = b""
    reason: str = ""
    height: int = 0
    width: int = 0
    facts: Facts | None = None  # what validation needs of the file (components/image_facts.py)


def read_image(row: Row, label_index: dict[str, int], record_format: str,
               max_file_bytes: int = MAX_FILE_BYTES, facts: bool = True) -> Image:
    """The one place an image's bytes are read, checked and decoded: the row's file -> its record and, with
    facts, its validation facts (or the reason on the row). Runs in the shard writer's threads; never raises for
    one bad file."""
    try:
        data = storage.read_at_most(row["image_uri"], max_file_bytes)
    except storage.FileTooLarge as e:
        return Image(row, reason=str(e))
    except Exception as e:  # noqa: BLE001 - any filesystem failure is this row's reason
        return Image(row, reason=f"cannot read file: {type(e).__name__}: {e}")
    try:
        index = label_index[row["label"]]
        if record_format == "tfrecorder":
            pixels, height, width = to_rgb_pixels(data)
            example = schema.tfrecorder_example(pixels, height, width, row["image_uri"], index, row["split"])
        else:
            jpeg, height, width = to_rgb_jpeg(data)
            example = schema.jpeg_example(jpeg, height, width, row["image_uri"], index, row["label"], row["split"])
        return Image(row, example, height=height, width=width, facts=image_facts(data) if facts else None)
    except BadImage as e:
        return Image(row, reason=str(e))
    except Exception as e:  # a decoder bug on one odd file must not stop the other rows
        log.exception("unexpected failure on %s", row["image_uri"])
        return Image(row, reason=f"unexpected {type(e).__name__}: {e}")


@beam.typehints.with_input_types(tuple[tuple[str, int], Iterable[Row]])
@beam.typehints.with_output_types(str)
class WriteShard(beam.DoFn):
    """((split, shard index), rows) -> one TFRecord shard file. Reads, checks and encodes each row's image
    (`read_image` in threads that overlap reads and decodes) and writes the record at once: image bytes never
    enter a PCollection. Emits the shard's path, each row whose image cannot be used on the "bad" output, and each
    written image's facts line (components/image_facts.py FACTS_COLUMNS, ~100 bytes) on the "facts" output."""

    def __init__(self, folder: str, shards: dict[str, int], labels: list[str], record_format: str, gzip: bool,
                 max_file_bytes: int = MAX_FILE_BYTES, facts: bool = True):
        self.folder, self.shards, self.record_format, self.gzip = folder, shards, record_format, gzip
        self.label_index = {label: i for i, label in enumerate(labels)}
        self.max_file_bytes, self.facts = max_file_bytes, facts

    def setup(self):
        self.pool = ThreadPoolExecutor(IMAGE_THREADS)

    def teardown(self):
        self.pool.shutdown()

    def process(self, keyed):
        (split, index), rows = keyed
        path = storage.join(self.folder, shard_name(split, index, self.shards[split], self.gzip))
        shard = ShardFile(path, self.gzip)
        try:
            for image, encoded in _bounded_map(self.pool, self._read, rows, 4 * IMAGE_THREADS):
                if image.reason:
                    yield beam.pvalue.TaggedOutput(BAD, bad_row(image.row, image.reason))
                    continue
                shard.write(encoded)
                count(f"good/{image.row['split']}/{image.row['label']}")
                if image.facts is not None:
                    row = image.row
                    yield beam.pvalue.TaggedOutput(
                        FACTS, csv_line([row["split"], row["image_uri"], row["label"], *image.facts.values()]))
        finally:
            shard.close()
        yield path

    def _read(self, row: Row) -> tuple[Image, tuple[bytes, bytes] | None]:
        """In an image thread: the image and its record framed (and deflated) for the shard file."""
        image = read_image(row, self.label_index, self.record_format, self.max_file_bytes, self.facts)
        if image.reason:
            return image, None
        encoded, image.example = ShardFile.encode(image.example, self.gzip), b""  # one copy per image in flight
        return image, encoded


def _bounded_map(pool: ThreadPoolExecutor, fn, items, window: int):
    """pool.map in input order with at most `window` results in flight (memory stays bounded)."""
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


@beam.typehints.with_input_types(Row)
@beam.typehints.with_output_types(str, bad=Row, facts=str)
class WriteShards(beam.PTransform):
    """Unique rows -> `<split>-SSSSS-of-NNNNN.tfrecord[.gz]` in `folder` ("written": shard paths; "bad": rows
    whose image cannot be used; "facts": a facts CSV line per written image). Shards no row fell into are created
    empty by `finish_shards`."""

    def __init__(self, folder: str, shards: dict[str, int], labels: list[str], record_format: str, gzip: bool,
                 max_file_bytes: int = MAX_FILE_BYTES, facts: bool = True):
        super().__init__()
        self.folder, self.shards, self.labels = folder, shards, labels
        self.record_format, self.gzip, self.max_file_bytes, self.facts = record_format, gzip, max_file_bytes, facts

    def expand(self, rows):
        shards = self.shards
        return (
            rows
            | "ByShard" >> beam.Map(lambda row: ((row["split"], shard_of(row["image_uri"], shards[row["split"]])), row))
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShard(self.folder, shards, self.labels, self.record_format, self.gzip,
                                               self.max_file_bytes, self.facts))
            .with_outputs(BAD, FACTS, main="written")
        )


def finish_shards(folder: str, shards: dict[str, int], gzip: bool) -> None:
    """Creates the empty shards (a valid, empty TFRecord file), so every split has its full set of names."""
    for split, total in shards.items():
        for index in range(total):
            path = storage.join(folder, shard_name(split, index, total, gzip))
            if not FileSystems.exists(path):
                ShardFile(path, gzip).close()
