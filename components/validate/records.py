"""The records the rest of a run reads when validation follows conversion: the converted folder's shards, less the
rows `--fix` set to DISCARD (validation's quarantine.csv).

No image is read here. Each image's shard is known (schema.shard_of), so only the shards that hold a dropped row are
read and rewritten without it; every other file is linked (a local folder) or copied server-side (gs://). Without
drops no record is read at all. Memory holds the dropped rows' names, never records. The output appears
all-or-nothing, as convert's does (components/outputs.py): staged beside it and moved in when complete, so a
failed run leaves the previous records as they were, and only files this step wrote are ever replaced.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter

from components import outputs, storage
from components.contracts import SPLIT_PREFIX, SPLITS, SUMMARY_FILE
from components.convert import output, schema
from components.errors import InputError

log = logging.getLogger(__name__)

_FACTS = "facts-"  # validation's input: not needed downstream
# The files are convert's (shards, labels.json, summary.json, errors), handed on by this tool.
KIND = outputs.Kind(tool="catsdogs validate --records-out", ours=output.KIND.ours, claimed=output.KIND.claimed,
                    last=SUMMARY_FILE)


def read_dropped(validation_dir: str) -> dict[tuple[str, str], str]:
    """{(split, image_uri as convert spells it): label} of the rows a validation with --fix set to DISCARD (its
    quarantine.csv; none without it)."""
    from components.validate.core import QUARANTINE_FILE

    path = storage.join(validation_dir, QUARANTINE_FILE)
    if not storage.exists(path):
        return {}
    with io.StringIO(storage.read_text(path)) as text:
        return {(row["split"], storage.normalise_uri(row["image_uri"])): row["label"] for row in csv.DictReader(text)}


def without_dropped(converted: str, output_dir: str, dropped: dict[tuple[str, str], str]) -> int:
    """Writes converted's records into output_dir without the `dropped` rows ({(split, image_uri): label}) and a
    summary.json that counts what is left; returns how many records were dropped."""
    summary = schema.read_summary(converted)
    if not summary:
        raise InputError(f"{converted}: no {SUMMARY_FILE}: is it the output folder of `catsdogs convert`?")
    target = outputs.resolve(output_dir)
    outputs.check_output_dir(target, KIND)
    with outputs.locked(target, KIND):
        previous = outputs.check_output_dir(target, KIND)  # again: no other run can change it now
        outputs.clean_leftovers(target)
        staging = outputs.new_staging_dir(target, KIND)
        try:
            removed = _hand_on(converted, staging, dropped, summary)
        except BaseException:
            outputs.discard(staging, KIND)  # the previous records stay as they were
            raise
        outputs.commit(staging, target, previous, KIND)
    return removed


def _hand_on(converted: str, staging: str, dropped: dict[tuple[str, str], str], summary: dict) -> int:
    names = storage.list_dir(converted)
    shards = {split: sorted(n for n in names if n.startswith(SPLIT_PREFIX[split] + "-")) for split in SPLITS}
    rewrite: dict[str, dict[str, tuple[str, str]]] = {}  # shard -> {image_uri: (split, label)}
    for (split, uri), label in dropped.items():
        if shards.get(split):
            rewrite.setdefault(shards[split][schema.shard_of(uri, len(shards[split]))], {})[uri] = (split, label)
    labels = schema.read_labels(converted)
    removed: Counter = Counter()
    for name in names:
        source, target = storage.join(converted, name), storage.join(staging, name)
        if name.startswith(_FACTS) or name in (outputs.MANIFEST_FILE, SUMMARY_FILE):
            continue
        if name in rewrite:
            removed.update(_rewrite_shard(source, target, rewrite[name], labels))
        else:
            storage.link_or_copy(source, target)
    expected = sum(len(rows) for rows in rewrite.values())
    if sum(removed.values()) != expected:  # convert and validation disagree on a name: never train on a guess
        raise RuntimeError(f"validation dropped {expected} rows of {converted}, but {sum(removed.values())} records "
                           "matched them in their shards")
    storage.write_text(storage.join(staging, SUMMARY_FILE), json.dumps(_less(summary, removed), indent=1))
    return sum(removed.values())


def _rewrite_shard(source: str, target: str, rows: dict[str, tuple[str, str]], labels: list[str]) -> Counter:
    """Copies one shard's records except those of `rows`; returns {(split, label): records left out}. A `jpeg`
    record names its image_uri; a `tfrecorder` one only its file name, label and split, which must then match."""
    import tensorflow as tf

    by_name = {(uri.rsplit("/", 1)[-1], labels.index(label), split): uri for uri, (split, label) in rows.items()}
    compression = "GZIP" if source.endswith(".gz") else ""
    removed: Counter = Counter()
    with tf.io.TFRecordWriter(target, options=compression or None) as writer:
        for record in tf.data.TFRecordDataset(source, compression_type=compression).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            if "image_uri" in features:
                uri = features["image_uri"].bytes_list.value[0].decode()
            else:
                key = (features["image_name"].bytes_list.value[0].decode(), features["label"].int64_list.value[0],
                       features["split"].bytes_list.value[0].decode())
                uri = by_name.get(key, "")
            if uri in rows:
                removed[rows[uri]] += 1
                continue
            writer.write(record)
    log.info("%s: %d of its records left out (set to DISCARD by validation)", target, sum(removed.values()))
    return removed


def _less(summary: dict, removed: Counter) -> dict:
    """summary.json's counts without the removed records (counted as discarded, as a DISCARD row is)."""
    out = json.loads(json.dumps(summary))
    total = sum(removed.values())
    out["good"] = out.get("good", 0) - total
    out["discarded"] = out.get("discarded", 0) + total
    for (split, label), count in removed.items():
        out["per_split"][split] -= count
        out["per_label"][label] -= count
        out["per_split_label"][split][label] -= count
    return out
