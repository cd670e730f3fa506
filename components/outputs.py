"""An output folder that one run owns at a time and in which a run replaces only its own files.

`catsdogs convert` and `catsdogs batch-predict` write their output the same way:

    with outputs.locked(output_dir, KIND):          # one run per folder; a killed run's lock does not stick
        previous = outputs.check_output_dir(...)     # refuses files it did not write that readers would mix in
        outputs.clean_leftovers(...)                 # staging folders of killed runs (none can be live: we lock)
        staging = outputs.new_staging_dir(...)       # beside the output, on its filesystem
        ... the run writes into staging ...
        outputs.commit(staging, output_dir, previous, KIND)   # or discard(staging) when the run failed

The output folder's `_catsdogs_manifest.json` names the tool and lists the files it put there: only files whose
name the tool writes AND that the manifest lists are ever replaced or deleted; a folder whose files a reader would
take for the tool's output but that the manifest does not list is refused before anything is touched.

A local output is resolved to its real path first, so the staging folder lies beside the real target (an output
given as a symlink to a container volume is staged on that volume); where a rename still cannot cross
filesystems (the target is itself a mount point) a file is copied under a temporary name and renamed there.
Local folders and gs:// go through Beam's FileSystems; the GCS lock uses google-cloud-storage's preconditions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components import storage
from components.errors import InputError

log = logging.getLogger(__name__)

MANIFEST_FILE = "_catsdogs_manifest.json"
STAGING_MARK = ".catsdogs-staging-"
LOCK_SUFFIX = ".catsdogs-lock"
PARTIAL_MARK = ".catsdogs-partial-"
# A GCS lock cannot be tied to a live process on another machine: one older than this is taken as a killed
# run's (a local lock is a kernel lock, released when its process dies, and never goes stale).
GCS_LOCK_STALE_SECONDS = 12 * 3600
# Beam's temporary folders of a killed run (written inside the folder Beam writes to).
BEAM_TEMP = re.compile(r"^beam-temp-[A-Za-z0-9_.-]+-[0-9a-f]{32}$")


@dataclass(frozen=True)
class Kind:
    """What one tool writes into its output folder."""

    tool: str  # the name in the manifest and in messages, e.g. "catsdogs convert"
    ours: re.Pattern  # names the tool writes: only those (and listed in its manifest) are replaced or deleted
    claimed: re.Pattern  # names a reader of the output would take for the tool's files, whoever wrote them
    last: str = ""  # moved last: the file whose presence says the output is complete


def resolve(output_dir: str) -> str:
    """One spelling per output: a local folder's real absolute path (symlinks followed), gs:// without a
    trailing slash."""
    if not output_dir.strip():
        raise InputError("--output-dir is empty: name a folder")
    if storage.is_gcs(output_dir):
        return output_dir.rstrip("/")
    return os.path.realpath(output_dir)


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


# --- the lock ---------------------------------------------------------------------------------------------------

def _holder(kind: Kind) -> dict:
    return {"tool": kind.tool, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["started"])))
        return f"{holder['tool']} (pid {holder['pid']} on {holder['host']}, started {started})"
    except (ValueError, KeyError, TypeError):
        return "another run"


@contextlib.contextmanager
def locked(output_dir: str, kind: Kind):
    """Holds the output's lock (`<output>.catsdogs-lock`, beside it) for the block; refuses with one line when
    another run holds it. output_dir must be resolved (`resolve`)."""
    path = output_dir + LOCK_SUFFIX
    if storage.is_gcs(path):
        with _gcs_lock(path, kind, output_dir):
            yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise InputError(f"--output-dir {output_dir} is being written by {_describe_holder(holder)}; "
                             f"wait for it to finish or choose another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file between our open and our lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder(kind)).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiting opener sees another inode and starts again
        os.close(fd)


@contextlib.contextmanager
def _gcs_lock(path: str, kind: Kind, output_dir: str):
    """A lock object created only if absent (ifGenerationMatch=0); a stale one is deleted only if it is still
    the same generation, so two runs that both find it stale cannot both take the lock."""
    from google.api_core.exceptions import NotFound, PreconditionFailed
    from google.cloud import storage as gcs

    bucket, _, name = path[len("gs://"):].partition("/")
    blob = gcs.Client().bucket(bucket).blob(name)
    for attempt in range(2):
        try:
            blob.upload_from_string(json.dumps(_holder(kind)), if_generation_match=0)
            break
        except PreconditionFailed:
            try:
                blob.reload()
                text = blob.download_as_bytes(if_generation_match=blob.generation).decode("utf-8", "replace")
            except (NotFound, PreconditionFailed):
                continue  # released or replaced meanwhile: try again
            age = time.time() - blob.updated.timestamp()
            if attempt or age < GCS_LOCK_STALE_SECONDS:
                raise InputError(f"--output-dir {output_dir} is being written by {_describe_holder(text)}; wait "
                                 f"for it to finish, or if no run is writing there delete {path}") from None
            log.warning("removing %s, a lock %.0f hours old (a killed run's)", path, age / 3600)
            with contextlib.suppress(NotFound, PreconditionFailed):
                blob.delete(if_generation_match=blob.generation)
    else:
        raise InputError(f"--output-dir {output_dir}: could not take its lock {path}")
    generation = blob.generation
    try:
        yield
    finally:
        with contextlib.suppress(NotFound, PreconditionFailed):
            blob.delete(if_generation_match=generation)


# --- the manifest -----------------------------------------------------------------------------------------------

def read_manifest(folder: str, kind: Kind) -> list[str]:
    """The files a previous run of the tool put in the folder (none without a manifest); a manifest of another
    tool or that cannot be read is refused: its files are not ours to replace."""
    path = storage.join(folder, MANIFEST_FILE)
    if not FileSystems.exists(path):
        return []
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            manifest = json.loads(f.read().decode("utf-8"))
        files = manifest["files"]
        if not isinstance(files, list) or not all(isinstance(n, str) for n in files):
            raise ValueError("files is not a list of names")
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a catsdogs manifest ({e}); move the folder's files aside") from e
    if manifest.get("tool", kind.tool) != kind.tool:
        raise InputError(f"--output-dir {folder} holds the output of {manifest['tool']} (see {MANIFEST_FILE}); "
                         f"{kind.tool} will not replace it: choose another folder")
    return files


def _write_manifest(folder: str, files: list[str], state: str, kind: Kind) -> None:
    text = json.dumps({"tool": kind.tool, "state": state, "files": sorted(files)}, indent=1) + "\n"
    with FileSystems.create(storage.join(folder, MANIFEST_FILE), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode("utf-8"))


def check_output_dir(output_dir: str, kind: Kind) -> list[str]:
    """Refuses an output that cannot be written safely, before anything is touched; returns the previous run's
    files (from the manifest) that a successful run replaces."""
    if storage.is_gcs(output_dir) and "/" not in output_dir[len("gs://"):].strip("/"):
        raise InputError(f"--output-dir {output_dir} is a bucket's root: name a folder inside it (the run is staged "
                         f"in a folder beside the output)")
    if not storage.is_gcs(output_dir) and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise InputError(f"--output-dir {output_dir} is a file, expected a folder")
    if not storage.is_gcs(output_dir) and not os.path.exists(output_dir):
        return []
    previous = set(read_manifest(output_dir, kind))
    foreign = sorted(n for n in _names(output_dir) if (kind.ours.match(n) or kind.claimed.match(n))
                     and n not in previous)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(
            f"--output-dir {output_dir} holds {shown}, which {kind.tool} did not write (its {MANIFEST_FILE} does "
            f"not list them); {kind.tool} will not overwrite or mix with them: move them or choose another folder")
    return sorted(n for n in previous if kind.ours.match(n))


# --- staging ----------------------------------------------------------------------------------------------------

def new_staging_dir(output_dir: str, kind: Kind) -> str:
    """A fresh staging folder beside the (resolved) output, marked as ours by an empty manifest."""
    staging = output_dir + STAGING_MARK + uuid.uuid4().hex[:12]
    if not storage.is_gcs(staging):
        os.makedirs(staging)
    _write_manifest(staging, [], "staging", kind)
    return staging


def _staging_leftovers(output_dir: str) -> list[str]:
    parent, _, name = output_dir.rpartition("/")
    if not storage.is_gcs(parent) and not os.path.isdir(parent or "/"):
        return []
    return [path for child, path in _names(parent or "/").items()
            if child.startswith(name + STAGING_MARK) and FileSystems.exists(storage.join(path, MANIFEST_FILE))]


def clean_leftovers(output_dir: str) -> None:
    """Deletes what killed or failed runs left: staging folders beside the output (recognised by name and
    manifest; no live run has one, as every run holds the output's lock) and Beam's beam-temp-* folders and our
    partial copies inside it."""
    stale = _staging_leftovers(output_dir)
    names = _names(output_dir) if storage.is_gcs(output_dir) or os.path.isdir(output_dir) else {}
    stale += [path for name, path in names.items() if BEAM_TEMP.match(name)]
    partial = [path for name, path in names.items() if PARTIAL_MARK in name and not path.endswith("/")]
    if stale or partial:
        log.info("removing leftovers of earlier runs: %s", ", ".join(stale + partial))
        _delete_folders(stale)
        if partial:
            FileSystems.delete(partial)


def _delete_folders(paths: list[str]) -> None:
    for path in paths:
        path = path if path.endswith("/") else path + "/"
        if storage.is_gcs(path):
            FileSystems.delete([path])
        elif os.path.isdir(path):
            shutil.rmtree(path)


def discard(staging: str, kind: Kind, keep: tuple[str, ...] = ()) -> None:
    """After a failed run: deletes the staging folder, or only its other files when `keep` names files the user
    should still read (the errors and the summary of a run that had too many bad rows)."""
    if not keep:
        _delete_folders([staging])
        return
    names = _names(staging)
    doomed = [path for name, path in names.items() if name not in keep and name != MANIFEST_FILE]
    _delete_folders([p for p in doomed if p.endswith("/")])
    if [p for p in doomed if not p.endswith("/")]:
        FileSystems.delete([p for p in doomed if not p.endswith("/")])
    _write_manifest(staging, [n for n in keep if n in names], "failed", kind)


def _move(source: str, target: str) -> None:
    """A rename; across filesystems a copy under a temporary name in the target's folder, then a rename there,
    so a reader never sees half a file."""
    try:
        os.replace(source, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        folder, name = os.path.split(target)
        partial = os.path.join(folder, f".{name}{PARTIAL_MARK}{uuid.uuid4().hex[:12]}")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
        os.remove(source)


def commit(staging: str, output_dir: str, previous: list[str], kind: Kind) -> list[str]:
    """Moves the staged files into the output and removes the previous run's files the new one does not
    replace. The manifest first lists old and new files together, so an interruption never leaves a file of ours
    unlisted (the next run can still clean it). `kind.last` is moved last."""
    staged = sorted((n for n in _names(staging) if kind.ours.match(n)), key=lambda n: (n == kind.last, n))
    if not storage.is_gcs(output_dir):
        os.makedirs(output_dir, exist_ok=True)
    _write_manifest(output_dir, sorted(set(previous) | set(staged)), "replacing", kind)
    sources, targets = [storage.join(staging, n) for n in staged], [storage.join(output_dir, n) for n in staged]
    if storage.is_gcs(output_dir):
        FileSystems.rename(sources, targets)
    else:
        for source, target in zip(sources, targets):
            _move(source, target)
    stale = [storage.join(output_dir, n) for n in previous if n not in staged]
    stale = [p for p in stale if FileSystems.exists(p)]
    if stale:
        FileSystems.delete(stale)
    _write_manifest(output_dir, staged, "complete", kind)
    _delete_folders([staging])
    return staged
