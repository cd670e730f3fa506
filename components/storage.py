"""Paths that may be local folders or gs:// URIs, behind one small API.

Local paths use the standard library; gs:// goes through google-cloud-storage, which honours
STORAGE_EMULATOR_HOST. Everything else in the project calls these functions instead of os.path.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Iterator


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def _split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    return bucket, prefix


def _gcs_client():
    from google.cloud import storage

    return storage.Client()


def exists(path: str) -> bool:
    """Whether path is a file or a folder holding files. On GCS a folder is the "<path>/" prefix: a bare name
    prefix would also match siblings (gs://b/data matching gs://b/data-old/..., saved_model.pb matching
    saved_model.pbtxt)."""
    if is_gcs(path):
        bucket, name = _split_gcs(path)
        client = _gcs_client()
        name = name.rstrip("/")
        # The bucket's root is a folder like any other: bucket.exists() would need storage.buckets.get, which the
        # object roles (roles/storage.objectAdmin, objectViewer) lack, so it would answer 403.
        if name and client.bucket(bucket).blob(name).exists():
            return True
        prefix = name + "/" if name else ""
        return next(iter(client.list_blobs(bucket, prefix=prefix, max_results=1)), None) is not None
    return os.path.exists(path)


def walk_files(root: str) -> Iterator[str]:
    """Yields every file below `root` as a path relative to it, '/'-separated, in sorted order."""
    if is_gcs(root):
        bucket, prefix = _split_gcs(root)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names = (b.name for b in _gcs_client().list_blobs(bucket, prefix=prefix))
        yield from sorted(n[len(prefix):] for n in names if not n.endswith("/"))
        return
    found = []
    for folder, _, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        for name in files:
            found.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    yield from sorted(found)


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        bucket, name = _split_gcs(path)
        return _gcs_client().bucket(bucket).blob(name).download_as_bytes()
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    if is_gcs(path):
        bucket, name = _split_gcs(path)
        _gcs_client().bucket(bucket).blob(name).upload_from_string(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def copy_tree(src: str, dst: str, last: str = "") -> None:
    """Copies every file below src to the same relative place below dst; the file named `last` (relative
    to src) is copied after all others, so a reader waiting for it never finds a half-copied tree."""
    if not is_gcs(src) and not is_gcs(dst) and not last:
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return
    for rel in sorted(walk_files(src), key=lambda rel: rel == last):
        write_bytes(join(dst, rel), read_bytes(join(src, rel)))


def link_or_copy(src: str, dst: str) -> None:
    """One file to another place without reading it here where that is possible: a hard link on one local file
    system (else a copy), a server-side copy from gs:// to gs://."""
    if not is_gcs(src) and not is_gcs(dst):
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, dst)
        return
    if is_gcs(src) and is_gcs(dst):
        (src_bucket, src_name), (dst_bucket, dst_name) = _split_gcs(src), _split_gcs(dst)
        client = _gcs_client()
        client.bucket(src_bucket).copy_blob(client.bucket(src_bucket).blob(src_name), client.bucket(dst_bucket),
                                            dst_name)
        return
    write_bytes(dst, read_bytes(src))


def list_dir(path: str) -> list[str]:
    """Names of the immediate children (files and folders) of a folder."""
    if is_gcs(path):
        return sorted({rel.split("/", 1)[0] for rel in walk_files(path)})
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


class FileTooLarge(ValueError):
    """A file over the size limit of a reader; the message is the row's reason."""


def read_at_most(path: str, limit: int) -> bytes:
    """The whole file, through Beam's FileSystems (local, gs:// on Dataflow workers), reading at most limit + 1
    bytes: FileTooLarge when there are more (also for endless files such as /dev/zero, whose size says 0)."""
    from apache_beam.io.filesystems import FileSystems

    if not is_gcs(path) and os.path.isfile(path) and os.path.getsize(path) > limit:  # a regular file's size is true
        raise FileTooLarge(f"file is larger than the {limit}-byte limit (--max-file-bytes)")
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"file is larger than the {limit}-byte limit (--max-file-bytes)")
    return data


def normalise_uri(uri: str) -> str:
    """One spelling per file: `a//b`, `./a/b`, `a/./b` and the absolute path are one local file; `//` and `/./`
    are collapsed in gs:// (and other scheme://) names too (GCS could hold both `a//b` and `a/b`; no image set
    does). Relative local paths are resolved against the working folder, as reading them would."""
    scheme, sep, rest = uri.partition("://")
    if sep:
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.abspath(uri)
