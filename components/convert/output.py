"""The output folder of `catsdogs convert` as a transaction that owns only its own files.

A run writes everything into a staging folder beside the output (`<output>.catsdogs-staging-<id>`) and moves the
result into place only when it has succeeded, so a failed run (every image missing, a bad Beam option, a killed
process) leaves the previous conversion exactly as it was. The output folder's `_catsdogs_manifest.json` lists the
files convert put there; a re-run deletes only files whose name is one of convert's AND that the manifest lists,
and refuses to start when the folder holds convert-like files it did not write (another dataset's shards would
otherwise be read by training beside ours). Local folders and gs:// go through Beam's FileSystems.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components import storage
from components.contracts import LABELS_FILE, SPLIT_PREFIX, SUMMARY_FILE
from components.errors import InputError

log = logging.getLogger(__name__)

MANIFEST_FILE = "_catsdogs_manifest.json"
STAGING_MARK = ".catsdogs-staging-"
ERRORS_FILE = "errors-00000-of-00001.csv"
_PREFIXES = "|".join(SPLIT_PREFIX.values())
# Names convert writes; only files with such a name (and listed in the manifest) are ever replaced or deleted.
OUR_FILE = re.compile(rf"^(({_PREFIXES})-\d{{5}}-of-\d{{5}}\.tfrecord(\.gz)?|errors-\d{{5}}-of-\d{{5}}\.csv|"
                      rf"{re.escape(LABELS_FILE)}|{re.escape(SUMMARY_FILE)})$")
# Files training would read as shards of this folder, whoever wrote them.
SHARD_LIKE = re.compile(rf"^({_PREFIXES})-.*\.tfrecord")
# Beam's temporary folders of a killed run (convert before the staging folder wrote them into the output).
BEAM_TEMP = re.compile(r"^beam-temp-(errors|train|validation|test)-[0-9a-f]{32}$")


def _names(folder: str) -> dict[str, str]:
    """Immediate children of a folder: name -> full path (folders end with '/')."""
    if storage.is_gcs(folder):  # GCS "folders" are name prefixes
        found = {}
        for rel in storage.walk_files(folder):
            top, _, below = rel.partition("/")
            found.setdefault(top, storage.join(folder, top) + ("/" if below else ""))
        return found
    if not os.path.isdir(folder):
        return {}
    return {name: os.path.join(folder, name) + ("/" if os.path.isdir(os.path.join(folder, name)) else "")
            for name in os.listdir(folder)}


def read_manifest(folder: str) -> list[str]:
    path = storage.join(folder, MANIFEST_FILE)
    if not FileSystems.exists(path):
        return []
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            files = json.loads(f.read().decode("utf-8"))["files"]
        if not isinstance(files, list) or not all(isinstance(n, str) for n in files):
            raise ValueError("files is not a list of names")
        return files
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a catsdogs convert manifest ({e}); move the folder's files aside") from e


def _write_manifest(folder: str, files: list[str], state: str) -> None:
    text = json.dumps({"tool": "catsdogs convert", "state": state, "files": sorted(files)}, indent=1) + "\n"
    with FileSystems.create(storage.join(folder, MANIFEST_FILE), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode("utf-8"))


def check_output_dir(output_dir: str) -> list[str]:
    """Refuses an output that cannot be written safely, before anything is touched; returns the previous
    conversion's files (from the manifest) that a successful run will replace."""
    if storage.is_gcs(output_dir) and "/" not in output_dir[len("gs://"):].strip("/"):
        raise InputError(f"--output-dir {output_dir} is a bucket's root: name a folder inside it (the run is staged "
                         f"in a folder beside the output)")
    if not storage.is_gcs(output_dir) and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"--output-dir {output_dir} is a file, expected a folder")
    if not storage.is_gcs(output_dir) and not os.path.exists(output_dir):
        return []
    previous = set(read_manifest(output_dir))
    names = _names(output_dir)
    foreign = sorted(n for n in names if (OUR_FILE.match(n) or SHARD_LIKE.match(n)) and n not in previous)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(
            f"--output-dir {output_dir} holds {shown}, which catsdogs convert did not write (its {MANIFEST_FILE} "
            f"does not list them); convert will not overwrite or mix with them: move them or choose another folder")
    return sorted(n for n in previous if OUR_FILE.match(n))


def new_staging_dir(output_dir: str) -> str:
    """A fresh staging folder beside the output, marked as ours by an (empty) manifest."""
    staging = output_dir.rstrip("/") + STAGING_MARK + uuid.uuid4().hex[:12]
    if not storage.is_gcs(staging):
        os.makedirs(staging)
    _write_manifest(staging, [], "staging")
    return staging


def _staging_leftovers(output_dir: str) -> list[str]:
    parent, _, name = output_dir.rstrip("/").rpartition("/")
    if not parent:
        parent = "."
    if not storage.is_gcs(parent) and not os.path.isdir(parent):
        return []
    return [path for child, path in _names(parent).items()
            if child.startswith(name + STAGING_MARK) and FileSystems.exists(storage.join(path, MANIFEST_FILE))]


def clean_leftovers(output_dir: str, keep: str = "") -> None:
    """Deletes what killed or failed runs left: our staging folders beside the output (recognised by name and
    manifest) and Beam's beam-temp-* folders inside it."""
    stale = [p for p in _staging_leftovers(output_dir) if p.rstrip("/") != keep.rstrip("/")]
    if storage.is_gcs(output_dir) or os.path.isdir(output_dir):
        stale += [path for name, path in _names(output_dir).items() if BEAM_TEMP.match(name)]
    if stale:
        log.info("removing leftovers of earlier runs: %s", ", ".join(stale))
        _delete_folders(stale)


def _delete_folders(paths: list[str]) -> None:
    for path in paths:
        path = path if path.endswith("/") else path + "/"
        if storage.is_gcs(path):
            FileSystems.delete([path])
        elif os.path.isdir(path):
            FileSystems.delete([path.rstrip("/")])


def discard(staging: str, keep: tuple[str, ...] = ()) -> None:
    """After a failed run: deletes the staging folder, or only its shards when `keep` names files the user
    should still read (the errors and the summary of a run that had too many bad rows)."""
    if not keep:
        _delete_folders([staging])
        return
    names = _names(staging)
    FileSystems.delete([path for name, path in names.items() if name not in keep and name != MANIFEST_FILE])
    _write_manifest(staging, [n for n in keep if n in names], "failed")


def commit(staging: str, output_dir: str, previous: list[str]) -> list[str]:
    """Moves the staged files into the output and removes the previous conversion's files the new one does
    not replace. The manifest first lists old and new files together, so an interruption never leaves a file
    of ours unlisted (the next run can still clean it). summary.json is moved last."""
    staged = sorted((n for n in _names(staging) if OUR_FILE.match(n)), key=lambda n: n == SUMMARY_FILE)
    if not storage.is_gcs(output_dir):
        os.makedirs(output_dir, exist_ok=True)
    _write_manifest(output_dir, sorted(set(previous) | set(staged)), "replacing")
    FileSystems.rename([storage.join(staging, n) for n in staged], [storage.join(output_dir, n) for n in staged])
    stale = [storage.join(output_dir, n) for n in previous if n not in staged]
    stale = [p for p in stale if FileSystems.exists(p)]
    if stale:
        FileSystems.delete(stale)
    _write_manifest(output_dir, staged, "complete")
    _delete_folders([staging])
    return staged
