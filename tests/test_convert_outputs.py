"""`catsdogs convert` run as users run it (the command, in a subprocess): one run per output folder, outputs that
cross filesystems, labels checked after bad rows are removed, and reads capped in size."""

import csv
import errno
import io
import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

CATSDOGS = os.path.join(os.path.dirname(sys.executable), "catsdogs")


def catsdogs(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([CATSDOGS, *argv], capture_output=True, text=True, cwd=cwd, timeout=600)


def one_error_line(result: subprocess.CompletedProcess, command: str, *named: str) -> str:
    """Exit 2 and one error line, the last (progress lines at INFO may come before it), no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"catsdogs {command}: error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in named:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def _jpeg(colour=(200, 30, 30), size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_csv(path, rows) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("split", "image_uri", "label"))
        writer.writerows(rows)
    return str(path)


def _images(folder, count=6, labels="ab") -> list[tuple[str, str, str]]:
    """count small JPEGs; TEST for every third, TRAIN otherwise; labels in turn (both splits get both)."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(count):
        path = os.path.join(folder, f"{i}.jpg")
        with open(path, "wb") as f:
            f.write(_jpeg(colour=(i * 30 % 256, 0, 0)))
        rows.append(("TEST" if i % 3 == 0 else "TRAIN", path, labels[i % len(labels)]))
    return rows


def _tree(folder) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


def _open_for_writing_when_read(fifo: str, reader: subprocess.Popen) -> int:
    """Opens the named pipe for writing once the reader process has opened it for reading (it then blocks in
    the read until we write): the moment the first run is in the middle of its conversion."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        assert reader.poll() is None, reader.communicate()[1][-3000:]
        time.sleep(0.05)


def test_two_runs_into_one_folder_take_turns_and_neither_destroys_the_others_work(tmp_path):
    rows = _images(tmp_path / "images")
    fifo = str(tmp_path / "images" / "slow.jpg")
    os.mkfifo(fifo)  # the first run blocks reading this image until the test writes it
    first_csv = _write_csv(tmp_path / "first.csv", [*rows, ("TRAIN", fifo, "a")])
    second_csv = _write_csv(tmp_path / "second.csv", _images(tmp_path / "others", count=9))
    out = tmp_path / "out"

    first = subprocess.Popen([CATSDOGS, "convert", first_csv, "--output-dir", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fd = _open_for_writing_when_read(fifo, first)
    try:
        staged = [p for p in os.listdir(tmp_path) if p.startswith("out.catsdogs-staging-")]
        assert len(staged) == 1
        second = catsdogs("convert", second_csv, "--output-dir", str(out))
        one_error_line(second, "convert", str(out), "is being written by catsdogs convert", f"pid {first.pid}")
        assert os.path.isdir(tmp_path / staged[0])  # the first run's staging is still there
    finally:
        os.set_blocking(fd, True)
        os.write(fd, _jpeg(colour=(1, 2, 3)))
        os.close(fd)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]

    manifest = json.loads((out / "_catsdogs_manifest.json").read_text())
    assert sorted(os.listdir(out)) == sorted([*manifest["files"], "_catsdogs_manifest.json"])
    assert json.loads((out / "summary.json").read_text())["good"] == 7  # the first run's rows, none of the second's
    assert sorted(os.listdir(tmp_path)) == ["first.csv", "images", "others", "out", "second.csv"]
    # The lock is free again: the second run now succeeds and replaces the first's files.
    assert catsdogs("convert", second_csv, "--output-dir", str(out)).returncode == 0
    assert json.loads((out / "summary.json").read_text())["good"] == 9


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path):
    csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path / "images"))
    out = tmp_path / "out"
    # A run killed with SIGKILL: its lock file stays, naming a process that is gone.
    (tmp_path / "out.catsdogs-lock").write_text(json.dumps(
        {"tool": "catsdogs convert", "pid": 999999, "host": "here", "started": 0}))
    result = catsdogs("convert", csv_path, "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["images", "in.csv", "out"]


def test_an_output_that_is_a_symlink_to_another_filesystem(tmp_path):
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test's folder")
    volume = os.path.join("/dev/shm", f"catsdogs-test-{os.getpid()}-{tmp_path.name}")
    os.makedirs(volume)
    try:
        (tmp_path / "out").symlink_to(volume)
        csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path / "images"))
        for _ in range(2):  # the second run replaces the first's files there
            result = catsdogs("convert", csv_path, "--output-dir", str(tmp_path / "out"))
            assert result.returncode == 0, result.stderr[-3000:]
        manifest = json.loads(open(os.path.join(volume, "_catsdogs_manifest.json")).read())
        assert manifest["state"] == "complete" and "train-00000-of-00001.tfrecord" in manifest["files"]
        assert sorted(os.listdir(volume)) == sorted([*manifest["files"], "_catsdogs_manifest.json"])
        assert json.loads(open(os.path.join(volume, "summary.json")).read())["good"] == 6
        assert sorted(os.listdir(tmp_path)) == ["images", "in.csv", "out"]
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(os.path.basename(volume) + ".")]
    finally:
        subprocess.run(["rm", "-rf", volume])


def test_a_move_across_filesystems_copies_under_a_temporary_name(tmp_path):
    """Where the output is itself a mount point a rename from beside it cannot cross: the file is copied."""
    from components.outputs import _move

    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test's folder")
    target_dir = os.path.join("/dev/shm", f"catsdogs-move-{os.getpid()}-{tmp_path.name}")
    os.makedirs(target_dir)
    try:
        (tmp_path / "shard").write_bytes(b"records")
        _move(str(tmp_path / "shard"), os.path.join(target_dir, "shard"))
        assert os.listdir(target_dir) == ["shard"]
        assert open(os.path.join(target_dir, "shard"), "rb").read() == b"records"
        assert not (tmp_path / "shard").exists()
    finally:
        subprocess.run(["rm", "-rf", target_dir])


# --- labels after bad rows are removed ---------------------------------------------------------------------------

def _labelled(tmp_path, bad: set[tuple[str, str]]) -> str:
    """30 TRAIN and 10 TEST images of label a, 2 TRAIN and 2 TEST of label b; the rows of the (split, label)
    pairs in `bad` are text files, not images: 2 of 44 rows, under the default 5% limit."""
    counts = {("TRAIN", "a"): 30, ("TEST", "a"): 10, ("TRAIN", "b"): 2, ("TEST", "b"): 2}
    (tmp_path / "images").mkdir()
    rows = []
    for (split, label), count in counts.items():
        for i in range(count):
            path = tmp_path / "images" / f"{split}-{label}-{i}.jpg"
            if (split, label) in bad:
                path.write_text("not an image")
            else:
                path.write_bytes(_jpeg(colour=(i * 8, 90 if label == "a" else 180, 9)))
            rows.append((split, str(path), label))
    return _write_csv(tmp_path / "in.csv", rows)


@pytest.mark.parametrize("bad, named", [
    ({("TRAIN", "b")}, ["TRAIN has images of 1 of the 2 labels (a 30, b 0)", "at least two"]),
    ({("TEST", "b")}, ["TEST has no image of b (a 10, b 0)", "its score would say nothing about it"]),
], ids=["no-b-in-train", "no-b-in-test"])
def test_a_label_left_without_images_stops_the_run_before_training(tmp_path, bad, named):
    csv_path = _labelled(tmp_path, bad)
    result = catsdogs("convert", csv_path, "--output-dir", str(tmp_path / "out"))
    one_error_line(result, "convert", *named, "errors-00000-of-00001.csv")
    assert not (tmp_path / "out").exists()


def test_a_third_label_whose_train_images_are_all_bad_stops_the_run(tmp_path):
    rows = _images(tmp_path / "images", count=60)  # labels a and b in TRAIN and TEST
    (tmp_path / "c-train.jpg").write_text("not an image")
    (tmp_path / "c-test.jpg").write_bytes(_jpeg(colour=(0, 0, 250)))
    rows += [("TRAIN", str(tmp_path / "c-train.jpg"), "c"), ("TEST", str(tmp_path / "c-test.jpg"), "c")]
    result = catsdogs("convert", _write_csv(tmp_path / "in.csv", rows), "--output-dir", str(tmp_path / "out"))
    one_error_line(result, "convert", "TRAIN has no image of c (a 20, b 20, c 0)", "the model would never see it")


def test_labels_present_in_every_split_convert(tmp_path):
    result = catsdogs("convert", _labelled(tmp_path, set()), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["per_split_label"] == {"TRAIN": {"a": 30, "b": 2}, "TEST": {"a": 10, "b": 2}}


# --- reads capped in size ----------------------------------------------------------------------------------------

def test_a_file_over_the_default_size_limit_is_an_error_row(tmp_path):
    from components.contracts import MAX_FILE_BYTES

    rows = _images(tmp_path / "images")
    huge = tmp_path / "images" / "huge.jpg"
    with open(huge, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    result = catsdogs("convert", _write_csv(tmp_path / "in.csv", [*rows, ("TRAIN", str(huge), "a")]),
                      "--output-dir", str(tmp_path / "out"), "--max-error-fraction", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    errors = list(csv.DictReader(open(tmp_path / "out" / "errors-00000-of-00001.csv")))
    assert [(e["image_uri"], e["reason"]) for e in errors] == [
        (str(huge), f"file is larger than the {MAX_FILE_BYTES}-byte limit (--max-file-bytes)")]


def test_an_endless_file_is_an_error_row_at_the_limit_the_user_sets(tmp_path):
    rows = _images(tmp_path / "images")
    result = catsdogs("convert", _write_csv(tmp_path / "in.csv", [*rows, ("TRAIN", "/dev/zero", "b")]),
                      "--output-dir", str(tmp_path / "out"), "--max-error-fraction", "0.5",
                      "--max-file-bytes", "1000000")
    assert result.returncode == 0, result.stderr[-3000:]
    errors = list(csv.DictReader(open(tmp_path / "out" / "errors-00000-of-00001.csv")))
    assert [(e["image_uri"], e["reason"]) for e in errors] == [
        ("/dev/zero", "file is larger than the 1000000-byte limit (--max-file-bytes)")]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["good"] == 6


def test_max_file_bytes_below_one_is_refused(tmp_path):
    result = catsdogs("convert", _write_csv(tmp_path / "in.csv", _images(tmp_path / "images")),
                      "--output-dir", str(tmp_path / "out"), "--max-file-bytes", "0")
    one_error_line(result, "convert", "--max-file-bytes")



def test_a_gcs_output_is_locked_too_and_a_stale_lock_is_taken_over(tmp_path, gcs_bucket, monkeypatch):
    from components import outputs, storage
    from components.convert.pipeline import convert
    from components.errors import InputError

    csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path / "images"))
    out = f"{gcs_bucket}/records"
    lock = out + outputs.LOCK_SUFFIX
    storage.write_text(lock, json.dumps({"tool": "catsdogs convert", "pid": 1, "host": "a-vm", "started": 0}))
    with pytest.raises(InputError, match=r"being written by catsdogs convert \(pid 1 on a-vm.*delete .*lock"):
        convert(csv_path, out)
    assert sorted(storage.walk_files(gcs_bucket)) == ["records.catsdogs-lock"]

    monkeypatch.setattr(outputs, "GCS_LOCK_STALE_SECONDS", 0)  # as if its run had been killed long ago
    convert(csv_path, out)
    assert "summary.json" in set(storage.walk_files(out))
    assert sorted({rel.split("/", 1)[0] for rel in storage.walk_files(gcs_bucket)}) == ["records"]
