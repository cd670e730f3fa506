import csv
import io
import json
import os

import pytest
import tensorflow as tf
from PIL import Image

from components.convert.images import to_rgb_jpeg
from components.convert.pipeline import convert
from components.errors import InputError
from components.image_files import BadImage
from components.train.data import make_dataset


def _jpeg(colour=(200, 30, 30), size=(40, 30), mode="RGB", fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode != "L" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_csv(path, rows, header=("split", "image_uri", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _read_back(out_dir) -> dict[str, tuple[str, str]]:
    """image_uri -> (split, label_text) for every record written."""
    found = {}
    for split in ("TRAIN", "VALIDATION", "TEST"):
        pattern = os.path.join(out_dir, f"{split.lower()}-*.tfrecord")
        for record in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)):
            features = tf.train.Example.FromString(record.numpy()).features.feature
            uri = features["image_uri"].bytes_list.value[0].decode()
            found[uri] = (features["split"].bytes_list.value[0].decode(),
                          features["label_text"].bytes_list.value[0].decode())
    return found


def _errors(out_dir) -> list[dict]:
    with open(os.path.join(out_dir, "errors-00000-of-00001.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_every_good_row_arrives_and_bad_ones_are_quarantined_with_a_reason(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(30):
        path = images / f"good{i}.jpg"
        path.write_bytes(_jpeg(colour=(i * 8, 50, 50)))
        rows.append(("TRAIN" if i < 20 else "TEST", str(path), "cats" if i % 2 else "dogs"))
    (images / "text.jpg").write_text("this is not a picture")
    (images / "empty.jpg").write_bytes(b"")
    (images / "truncated.jpg").write_bytes(_jpeg()[:200])
    rows += [
        ("TRAIN", str(images / "text.jpg"), "cats"),
        ("TRAIN", str(images / "empty.jpg"), "cats"),
        ("TRAIN", str(images / "truncated.jpg"), "dogs"),
        ("TRAIN", str(images / "missing.jpg"), "dogs"),
        ("HOLDOUT", str(images / "good0.jpg"), "dogs"),
        ("TEST", str(images / "good1.jpg"), ""),
        ("DISCARD", str(images / "good2.jpg"), "cats"),
        ("TRAIN", str(images / "good3.jpg"), "cats"),  # exact duplicate of row 4
    ]
    out = tmp_path / "out"
    summary = convert(_write_csv(tmp_path / "in.csv", rows), str(out), max_error_fraction=0.5)

    assert _read_back(out) == {str(images / f"good{i}.jpg"): ("TRAIN" if i < 20 else "TEST",
                                                             "cats" if i % 2 else "dogs") for i in range(30)}
    reasons = {os.path.basename(e["image_uri"]) + ":" + e["split"]: e["reason"] for e in _errors(out)}
    assert "not an image" in reasons["text.jpg:TRAIN"]
    assert "empty file" in reasons["empty.jpg:TRAIN"]
    assert "corrupt image" in reasons["truncated.jpg:TRAIN"]
    assert "cannot read file" in reasons["missing.jpg:TRAIN"]
    assert "unknown split 'HOLDOUT'" in reasons["good0.jpg:HOLDOUT"]
    assert "empty label" in reasons["good1.jpg:TEST"]
    assert (summary.good, summary.bad, summary.duplicates, summary.discarded) == (30, 6, 1, 1)
    assert summary.per_split == {"TRAIN": 20, "TEST": 10}
    assert json.loads((out / "labels.json").read_text()) == ["cats", "dogs"]
    assert json.loads((out / "summary.json").read_text())["good"] == 30


def test_label_indices_follow_the_sorted_label_list(records):
    labels = json.loads(open(os.path.join(records, "labels.json")).read())
    for split in ("TRAIN", "TEST"):
        for _, batch_labels in make_dataset(records, split, 16, 8):
            assert all(0 <= int(label) < len(labels) for label in batch_labels)
    texts = {}
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(records, "train-*"))):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        texts[f["label"].int64_list.value[0]] = f["label_text"].bytes_list.value[0].decode()
    assert texts == dict(enumerate(labels))


def test_too_many_bad_rows_fail_the_run_and_name_the_errors_file(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(_jpeg())
    rows = [("TRAIN", str(tmp_path / "ok.jpg"), "a"), ("TRAIN", str(tmp_path / "nope.jpg"), "b")]
    with pytest.raises(InputError, match=r"1 of 2 rows \(50.0%\) are bad.*left as it was.*errors-00000-of-00001.csv"
                       ) as failure:
        convert(_write_csv(tmp_path / "in.csv", rows), str(tmp_path / "out"))
    errors_path = str(failure.value).rsplit("reasons in ", 1)[1]
    assert [e["image_uri"] for e in _errors(os.path.dirname(errors_path))] == [str(tmp_path / "nope.jpg")]
    assert not (tmp_path / "out").exists()


def test_rerun_with_fewer_shards_leaves_no_stale_shards(tmp_path):
    rows = []
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(colour=(i * 30, 0, 0)))
        rows.append(("TRAIN", str(tmp_path / f"{i}.jpg"), "ab"[i % 2]))
    csv_path = _write_csv(tmp_path / "in.csv", rows)
    convert(csv_path, str(tmp_path / "out"), num_shards=3)
    assert len(list((tmp_path / "out").glob("train-*.tfrecord"))) == 3
    convert(csv_path, str(tmp_path / "out"), num_shards=1)
    assert [p.name for p in (tmp_path / "out").glob("train-*.tfrecord")] == ["train-00000-of-00001.tfrecord"]
    assert len(_read_back(tmp_path / "out")) == 6


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("split,image_uri\nTRAIN,a.jpg\n", "missing column.*label"),
        ("TRAIN,a.jpg,cats\n", "the CSV needs a header"),
        ("split,image_uri,label\n", "no rows"),
        ("split,image_uri,label\nBOGUS,a.jpg,cats\n", "no usable rows.*line 2: unknown split"),
        ('split,image_uri,label\nTRAIN,"a\nb.jpg",cats\nTEST,c.jpg,dogs\n', "line 2: a quoted field spans lines"),
    ],
    ids=["empty", "missing-column", "no-header", "no-rows", "no-usable-rows", "multi-line-field"],
)
def test_structurally_bad_csvs_fail_before_any_work(tmp_path, content, message):
    (tmp_path / "in.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        convert(str(tmp_path / "in.csv"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_csv_is_named(tmp_path):
    with pytest.raises(InputError, match="nothing.csv does not exist"):
        convert(str(tmp_path / "nothing.csv"), str(tmp_path / "out"))


def test_clean_rgb_jpegs_pass_through_byte_for_byte():
    data = _jpeg()
    assert to_rgb_jpeg(data) == (data, 30, 40)


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("P", "GIF"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "BMP")])
def test_other_modes_and_formats_become_rgb_jpegs(mode, fmt):
    colour = {"RGBA": (10, 20, 30, 255), "CMYK": (10, 20, 30, 0)}.get(mode, (10, 20, 30))
    jpeg, height, width = to_rgb_jpeg(_jpeg(mode=mode, fmt=fmt, colour=colour))
    with Image.open(io.BytesIO(jpeg)) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 30))
    assert (height, width) == (30, 40)


def test_decompression_bombs_are_rejected():
    header_only = io.BytesIO()
    Image.new("1", (10000, 10000)).save(header_only, format="PNG")
    with pytest.raises(BadImage, match="decompression bomb"):
        to_rgb_jpeg(header_only.getvalue())


# --- The pipeline's composite transforms, on Beam's TestPipeline -------------------------------------------------

COLUMNS = {"split": 0, "image_uri": 1, "label": 2}


def _abs(path: str) -> str:
    """Rows name local images by absolute path: one spelling per file."""
    return os.path.join(os.getcwd(), path)


def _test_pipeline():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline

    return TestPipeline(runner=FnApiRunner())


def test_check_rows_sends_bad_lines_to_errors_with_the_reason_and_uri():
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from components.convert.pipeline import CheckRows

    lines = ["TRAIN,a.jpg,cats", "train, ./x//b.jpg ,dogs", "HOLDOUT,c.jpg,cats", "TEST,,cats", "TEST,d.jpg,",
             "DISCARD,e.jpg,cats", "VALIDATION,f.jpg", "", '"TEST","g, h.jpg",cats']
    with _test_pipeline() as p:
        checked = p | beam.Create(lines) | CheckRows(COLUMNS, 3)
        assert_that(checked.good, equal_to([
            {"split": "TRAIN", "image_uri": _abs("a.jpg"), "label": "cats"},
            {"split": "TRAIN", "image_uri": _abs("x/b.jpg"), "label": "dogs"},
            {"split": "TEST", "image_uri": _abs("g, h.jpg"), "label": "cats"}]), label="good")
        assert_that(checked.bad | beam.Map(lambda r: (r["image_uri"], r["reason"].split(",")[0])), equal_to([
            ("c.jpg", "unknown split 'HOLDOUT'"), ("", "empty image_uri"), ("d.jpg", "empty label"),
            ("f.jpg", "2 fields")]), label="bad")


def test_deduplicate_keeps_one_row_per_image_and_refuses_conflicts():
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from components.convert.pipeline import CheckRows, Deduplicate

    lines = ["TRAIN,a//b.jpg,cats", "TRAIN,./a/b.jpg,cats", "TRAIN,a/b.jpg,cats",  # one image, three spellings
             "TRAIN,c.jpg,cats", "TEST,./c.jpg,dogs", "TRAIN,d.jpg,dogs"]
    with _test_pipeline() as p:
        unique = (p | beam.Create(lines) | CheckRows(COLUMNS, 3)).good | Deduplicate()
        assert_that(unique.good | beam.Map(lambda r: r["image_uri"]), equal_to([_abs("a/b.jpg"), _abs("d.jpg")]),
                    label="good")
        conflicts = unique.bad | beam.Map(
            lambda r: (r["image_uri"], r["split"], "TEST/dogs, TRAIN/cats" in r["reason"]))
        assert_that(conflicts, equal_to([(_abs("c.jpg"), "TRAIN", True), (_abs("c.jpg"), "TEST", True)]), label="bad")


def test_write_shards_writes_every_shard_and_reports_unreadable_images(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from components.convert.pipeline import WriteShards, shard_of

    rows = []
    for i in range(12):
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(colour=(i * 20, 0, 0)))
        rows.append({"split": "TRAIN", "image_uri": str(tmp_path / f"{i}.jpg"), "label": "ab"[i % 2]})
    rows.append({"split": "TEST", "image_uri": str(tmp_path / "missing.jpg"), "label": "a"})
    out = tmp_path / "out"
    out.mkdir()
    shards = {"TRAIN": 3, "VALIDATION": 1, "TEST": 1}
    with _test_pipeline() as p:
        written = p | beam.Create(rows) | WriteShards(str(out), shards, ["a", "b"], "jpeg", gzip=False)
        assert_that(written.written | beam.Map(os.path.basename), equal_to(sorted(
            {f"train-{shard_of(r['image_uri'], 3):05d}-of-00003.tfrecord" for r in rows[:12]}
            | {"test-00000-of-00001.tfrecord"})), label="written")
        assert_that(written.bad | beam.Map(lambda r: (os.path.basename(r["image_uri"]), r["reason"][:16])),
                    equal_to([("missing.jpg", "cannot read file")]), label="bad")
    assert len(_read_back(out)) == 12


# --- Scale: the job graph does not grow with the rows ---------------------------------------------------------------

def _job_graph_bytes(tmp_path, rows: int, capsys) -> int:
    from pipelines.cli import main

    csv_path = tmp_path / f"rows{rows}.csv"
    with open(csv_path, "w") as f:  # files that do not exist: a dry run must not read any image
        f.write("split,image_uri,label\n")
        f.writelines(f"{('TRAIN', 'VALIDATION', 'TEST')[i % 3]},gs://no-bucket/images/{i:07d}.jpg,"
                     f"{('cats', 'dogs')[i % 2]}\n" for i in range(rows))
    code = main(["convert", str(csv_path), "--output-dir", "gs://no-bucket/records", "--runner", "DataflowRunner",
                 "--project", "p", "--region", "europe-west4", "--temp-location", "gs://no-bucket/tmp", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and f"would convert {rows} rows" in out
    (line,) = [line for line in out.splitlines() if line.startswith("job graph: ")]
    return int(line.split()[2])


def test_dry_run_job_graph_is_the_same_size_at_1k_and_100k_rows(tmp_path, capsys):
    small, large = _job_graph_bytes(tmp_path, 1_000, capsys), _job_graph_bytes(tmp_path, 100_000, capsys)
    assert large <= 1_000_000
    assert abs(large - small) <= 4096
    assert os.listdir(tmp_path) == ["rows1000.csv", "rows100000.csv"]


# --- Hard edges: the output folder is a transaction that owns only its files ----------------------------------------

def _images(tmp_path, count=6, labels="ab") -> list[tuple[str, str, str]]:
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(count):
        (folder / f"{i}.jpg").write_bytes(_jpeg(colour=(i * 30, 0, 0)))
        rows.append(("TRAIN" if i % 3 else "TEST", str(folder / f"{i}.jpg"), labels[i % len(labels)]))
    return rows


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_keeps_the_users_other_files_in_the_output_folder(tmp_path):
    csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    mine = {"mydata.tfrecord": b"another dataset", "errors-report.csv": b"my notes", "notes.txt": b"keep"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    convert(csv_path, str(out), num_shards=2)
    convert(csv_path, str(out), num_shards=1)
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert sorted(p.name for p in out.glob("train-*")) == ["train-00000-of-00001.tfrecord"]
    assert json.loads((out / "_catsdogs_manifest.json").read_text())["files"] == sorted(
        ["errors-00000-of-00001.csv", "labels.json", "summary.json",
         "test-00000-of-00001.tfrecord",
         "train-00000-of-00001.tfrecord", "validation-00000-of-00001.tfrecord"])


def test_shards_it_did_not_write_are_refused_before_anything_is_touched(tmp_path):
    csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000-of-00001.tfrecord").write_bytes(b"TFRecorder's shard")
    with pytest.raises(InputError, match="train-00000-of-00001.tfrecord, which catsdogs convert did not write"):
        convert(csv_path, str(out))
    assert _snapshot(out) == {"train-00000-of-00001.tfrecord": b"TFRecorder's shard"}
    assert sorted(os.listdir(tmp_path)) == ["images", "in.csv", "out"]


def test_a_failed_run_leaves_the_previous_output_exactly_as_it_was(tmp_path):
    from pipelines.cli import main

    rows = _images(tmp_path)
    out = tmp_path / "out"
    convert(_write_csv(tmp_path / "in.csv", rows), str(out))
    before = _snapshot(out)
    missing = [(split, uri.replace(".jpg", "-gone.jpg"), label) for split, uri, label in rows]
    with pytest.raises(InputError, match="no image could be converted.*left as it was"):
        convert(_write_csv(tmp_path / "missing.csv", missing), str(out), max_error_fraction=1.0)
    assert _snapshot(out) == before
    for beam_args in (["--direct_num_workers=abc"], ["--no_such_beam_option=1"]):
        assert main(["convert", str(tmp_path / "in.csv"), "--output-dir", str(out), "--", *beam_args]) == 2
        assert _snapshot(out) == before


def test_bad_beam_options_are_one_error_line(tmp_path, capsys):
    from pipelines.cli import main

    csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path))
    assert main(["convert", csv_path, "--output-dir", str(tmp_path / "out"), "--", "--direct_num_workers=abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("catsdogs convert: error: Beam option") and "abc" in err[0]
    assert not (tmp_path / "out").exists()


def test_leftovers_of_killed_runs_are_cleaned_and_only_those(tmp_path):
    csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path))
    out = tmp_path / "out"
    beam_temp = out / ("beam-temp-errors-" + "0" * 32)
    beam_temp.mkdir(parents=True)
    (beam_temp / "part").write_text("half written")
    staging = tmp_path / "out.catsdogs-staging-123456abcdef"
    staging.mkdir()
    (staging / "_catsdogs_manifest.json").write_text('{"files": []}')
    (staging / "train-00000-of-00001.tfrecord").write_text("half written")
    users = tmp_path / "out.catsdogs-staging-mine"  # no manifest: not ours
    users.mkdir()
    (users / "keep.txt").write_text("keep")
    (out / "beam-temp-notes").mkdir()
    convert(csv_path, str(out))
    assert not beam_temp.exists() and not staging.exists()
    assert (users / "keep.txt").read_text() == "keep" and (out / "beam-temp-notes").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "in.csv", "out", "out.catsdogs-staging-mine"]


@pytest.mark.parametrize(
    "make_output, kwargs, message",
    [
        (lambda out: out.write_text("a file"), {}, "is a file, expected a folder"),
        (lambda out: None, {"num_shards": -1}, "--num-shards must be 0"),
        (lambda out: None, {"max_error_fraction": 2.0}, "--max-error-fraction must be between"),
        (lambda out: None, {"record_format": "png"}, "--format must be one of"),
    ],
    ids=["output-is-a-file", "negative-shards", "error-fraction", "format"],
)
def test_options_are_checked_before_anything_is_touched(tmp_path, make_output, kwargs, message):
    csv_path = _write_csv(tmp_path / "in.csv", _images(tmp_path))
    leftover = tmp_path / "out.catsdogs-staging-123456abcdef"
    leftover.mkdir()
    (leftover / "_catsdogs_manifest.json").write_text('{"files": []}')
    make_output(tmp_path / "out")
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=message):
        convert(csv_path, str(tmp_path / "out"), **kwargs)
    assert _snapshot(tmp_path) == before


def test_a_bucket_root_is_refused_as_output(tmp_path):
    with pytest.raises(InputError, match="bucket's root"):
        convert(_write_csv(tmp_path / "in.csv", _images(tmp_path)), "gs://some-bucket/")


def test_a_csv_saved_by_excel_with_a_byte_order_mark_works(tmp_path):
    rows = _images(tmp_path)
    csv_path = tmp_path / "excel.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + b"split,image_uri,label\r\n"
                         + "".join(f"{s},{u},{lbl}\r\n" for s, u, lbl in rows).encode())
    summary = convert(str(csv_path), str(tmp_path / "out"))
    assert summary.good == len(rows) and summary.labels == ["a", "b"]


def test_a_csv_that_is_not_utf8_is_one_error_naming_the_file(tmp_path, capsys):
    from pipelines.cli import main

    rows = _images(tmp_path)
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(("split,image_uri,label\n" + "".join(f"{s},{u},{lbl}\n" for s, u, lbl in rows)
                          + f"TRAIN,{rows[0][1]},chat-à-poil\n").encode("latin-1"))
    assert main(["convert", str(csv_path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latin1.csv" in err[0] and "not UTF-8" in err[0] and "line 8" in err[0]
    assert not (tmp_path / "out").exists()


def test_fewer_than_two_labels_are_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match=r"only the label \['a'\].*at least two"):
        convert(_write_csv(tmp_path / "in.csv", _images(tmp_path, labels="a")), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["images", "in.csv"]


def test_two_spellings_of_one_path_are_one_image(tmp_path, monkeypatch):
    rows = _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    split, uri, label = rows[1]
    name = os.path.basename(uri)
    respelled = [(split, "./images//" + name, label), (split, "images/./" + name, label)]
    summary = convert(_write_csv(tmp_path / "in.csv", rows + respelled), str(tmp_path / "out"))
    assert (summary.good, summary.duplicates, summary.rows) == (6, 2, 8)


def test_gcs_output_is_staged_kept_on_failure_and_owns_only_its_files(tmp_path, gcs_bucket):
    from components import storage

    rows = _images(tmp_path)
    out = f"{gcs_bucket}/records"
    storage.write_text(f"{out}/notes.txt", "the user's")
    storage.write_text(f"{out}/mydata.tfrecord", "another dataset")
    convert(_write_csv(tmp_path / "in.csv", rows), out, num_shards=2)
    before = {rel: storage.read_bytes(f"{out}/{rel}") for rel in storage.walk_files(out)}
    assert "train-00001-of-00002.tfrecord" in before and "_catsdogs_manifest.json" in before

    missing = [(split, uri.replace(".jpg", "-gone.jpg"), label) for split, uri, label in rows]
    with pytest.raises(InputError, match="no image could be converted"):
        convert(_write_csv(tmp_path / "missing.csv", missing), out, max_error_fraction=1.0)
    assert {rel: storage.read_bytes(f"{out}/{rel}") for rel in storage.walk_files(out)} == before

    convert(_write_csv(tmp_path / "in.csv", rows), out, num_shards=1)
    after = set(storage.walk_files(out))
    assert {"notes.txt", "mydata.tfrecord", "train-00000-of-00001.tfrecord"} <= after
    assert not any(name.endswith("-of-00002.tfrecord") for name in after)
    # Nothing left beside the output but the failed run's report: the re-run removed it as a leftover.
    assert sorted({rel.split("/", 1)[0] for rel in storage.walk_files(gcs_bucket)}) == ["records"]
