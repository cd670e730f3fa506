"""Batch prediction with Beam's RunInference on the local FnApiRunner, against the SavedModel's own answers."""

import csv
import glob
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from components.batch_predict.core import batch_predict, build_pipeline, resolve_model
from components.beam_runner import job_graph_bytes
from pipelines.cli import main


def _read_outputs(output_dir: str) -> tuple[list[dict], list[dict]]:
    predictions = [json.loads(line) for path in sorted(glob.glob(f"{output_dir}/predictions-*-of-*.jsonl"))
                   for line in open(path) if line.strip()]
    errors = [row for path in sorted(glob.glob(f"{output_dir}/errors-*-of-*.csv"))
              for row in csv.DictReader(open(path, newline=""))]
    return predictions, errors


@pytest.fixture(scope="module")
def mixed_inputs(sample_images, tmp_path_factory) -> dict:
    """31 readable images (27 JPEGs, 4 greyscale PNGs, under <split>/<label>/ and flat) and 3 bad files in a
    folder, plus a CSV listing all of them and a missing path: 35 inputs."""
    root = tmp_path_factory.mktemp("mixed") / "images"
    jpegs = sorted(glob.glob(f"{sample_images}/*/*.jpg"))
    readable = []
    for i, path in enumerate(jpegs[:27]):
        label = os.path.basename(os.path.dirname(path))
        target = root / ("test" if i % 2 else "train") / label / os.path.basename(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        readable.append(str(target))
    for i, path in enumerate(jpegs[27:31]):
        target = root / f"grey-{i}.png"
        Image.open(path).convert("L").save(target)
        readable.append(str(target))
    bad = {"empty": root / "empty.jpg", "truncated": root / "truncated.jpg", "text": root / "notes.jpg"}
    bad["empty"].write_bytes(b"")
    data = open(jpegs[31], "rb").read()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["text"].write_text("this is not an image\n")
    missing = str(root / "cats" / "missing.jpg")
    csv_path = root.parent / "images.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "image_uri", "label"])
        for path in [*readable, *map(str, bad.values()), missing]:
            writer.writerow(["TEST", path, "cats"])
    return {"root": str(root), "csv": str(csv_path), "readable": readable,
            "bad": [str(p) for p in bad.values()], "missing": missing}


def model_answers(model_dir: str, paths: list[str]) -> dict[str, tuple[str, list[float]]]:
    """The SavedModel's own answers: its serving_default signature on each file's bytes."""
    import tensorflow as tf

    serving = tf.saved_model.load(model_dir).signatures["serving_default"]
    answers = {}
    for path in paths:
        out = serving(image_bytes=tf.constant([open(path, "rb").read()]))
        answers[path] = (out["labels"].numpy()[0].decode(), out["probabilities"].numpy()[0].tolist())
    return answers


@pytest.fixture(scope="module")
def answers(trained_model, mixed_inputs) -> dict:
    return model_answers(trained_model, mixed_inputs["readable"])


def _check_against_model(predictions: list[dict], answers: dict, model_name: str, version: int) -> None:
    assert sorted(p["image_uri"] for p in predictions) == sorted(answers)
    for prediction in predictions:
        label, probabilities = answers[prediction["image_uri"]]
        assert prediction["label"] == label
        classes = list(prediction["probabilities"])
        assert classes == ["cats", "dogs"]
        assert [prediction["probabilities"][c] for c in classes] == pytest.approx(probabilities, abs=1e-5)
        assert (prediction["model"], prediction["version"]) == (model_name, version)


def test_csv_with_bad_inputs_gives_31_predictions_and_4_errors(trained_model, mixed_inputs, answers, tmp_path):
    out = str(tmp_path / "out")
    summary = batch_predict(mixed_inputs["csv"], trained_model, out, batch_size=8)

    predictions, errors = _read_outputs(out)
    assert (len(predictions), len(errors)) == (31, 4)
    assert (summary.predictions, summary.errors) == (31, 4)
    _check_against_model(predictions, answers, "saved_model", 1)
    reasons = {row["image_uri"]: row["reason"] for row in errors}
    assert set(reasons) == {*mixed_inputs["bad"], mixed_inputs["missing"]}
    empty, truncated, text = mixed_inputs["bad"]
    assert reasons[empty] == "empty file"
    assert "cannot read file" in reasons[mixed_inputs["missing"]]
    assert "not an image" in reasons[text]
    # PIL reads its header; TensorFlow's decoder refuses the rest
    assert reasons[truncated] == "cannot decode the image: jpeg::Uncompress failed. Invalid JPEG data or crop window."
    assert os.listdir(tmp_path) == ["out"], "the staging folder and the lock are removed after the swap"


def test_folder_of_split_label_and_flat_files(trained_model, mixed_inputs, answers, tmp_path):
    """The listing is every file below the folder; a model base's newest version scores it, and says so."""
    base = tmp_path / "models" / "catsdogs"
    for version in ("1", "2"):
        shutil.copytree(trained_model, base / version)
    out = str(tmp_path / "out")
    assert main(["batch-predict", mixed_inputs["root"], "--model", str(base), "--output-dir", out]) == 0

    predictions, errors = _read_outputs(out)
    assert (len(predictions), len(errors)) == (31, 3)
    _check_against_model(predictions, answers, "catsdogs", 2)
    assert {row["image_uri"] for row in errors} == set(mixed_inputs["bad"])


def test_a_failed_run_keeps_the_previous_output(trained_model, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    batch_predict(mixed_inputs["csv"], trained_model, str(out))
    before = {p: open(p).read() for p in glob.glob(f"{out}/*")}
    assert len(before) == 3  # predictions, errors and the manifest listing them
    broken = tmp_path / "broken"
    shutil.copytree(trained_model, broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")

    with pytest.raises(Exception):  # noqa: B017 - the workers' load failure, as Beam re-raises it
        batch_predict(mixed_inputs["csv"], str(broken), str(out))

    assert {p: open(p).read() for p in glob.glob(f"{out}/*")} == before
    assert sorted(os.listdir(tmp_path)) == ["broken", "out"]  # no staging folder or lock left beside it


def _csv_of(path, rows: int) -> str:
    with open(path, "w") as f:
        f.write("image_uri\n" + "".join(f"/images/{i:07d}.jpg\n" for i in range(rows)))
    return str(path)


def test_job_graph_does_not_grow_with_the_number_of_images(trained_model, tmp_path):
    import apache_beam as beam

    model = resolve_model(trained_model)
    sizes = []
    for rows in (10, 20000):
        pipeline = beam.Pipeline()
        folder = tmp_path / f"{rows:05d}"  # paths of the same length: they are in the graph
        folder.mkdir()
        build_pipeline(pipeline, _csv_of(folder / "images.csv", rows), model, str(folder / "out"), csv_column=0)
        sizes.append(job_graph_bytes(pipeline))
    # The 20000 paths are 440 KB of CSV; in the graph (beam.Create) they would add at least that. What differs
    # is a few bytes of pickled ids.
    assert abs(sizes[1] - sizes[0]) < 1000 and sizes[1] < 400_000


def test_dataflow_dry_run_prints_options_and_graph_size(trained_model, mixed_inputs, tmp_path, capsys):
    argv = ["batch-predict", mixed_inputs["csv"], "--model", trained_model, "--output-dir", "gs://bucket/scores",
            "--runner", "DataflowRunner", "--project", "my-project", "--region", "europe-west4",
            "--temp-location", "gs://bucket/tmp", "--sdk-container-image", "r/catsdogs-components:1",
            "--max-workers", "5", "--label", "app=catsdogs", "--dry-run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for option in ("--project=my-project", "--region=europe-west4", "--temp_location=gs://bucket/tmp",
                   "--sdk_container_image=r/catsdogs-components:1", "--max_num_workers=5", "app=catsdogs"):
        assert option in printed
    assert "  Predict\n    BatchElements" in printed
    assert int(printed.split("job graph: ")[1].split()[0]) > 0
    assert not os.path.exists(tmp_path / "scores")


@pytest.mark.parametrize("argv, message", [
    (["SOURCE_MISSING", "--model", "MODEL", "--output-dir", "OUT"], "does not exist"),
    (["CSV", "--model", "NO_MODEL", "--output-dir", "OUT"], "no saved_model.pb"),
    (["CSV", "--model", "MODEL", "--output-dir", "OUT", "--batch-size", "0"], "--batch-size"),
    (["NO_COLUMN", "--model", "MODEL", "--output-dir", "OUT"], "no image_uri column"),
    (["ROOT", "--model", "MODEL", "--output-dir", "INSIDE"], "inside SOURCE"),
    (["CSV", "--model", "MODEL", "--output-dir", "OUT", "--runner", "DataflowRunner"], "DataflowRunner needs"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, trained_model, mixed_inputs, tmp_path, capsys):
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("path,label\n/a.jpg,cats\n")
    names = {"SOURCE_MISSING": str(tmp_path / "nothing"), "MODEL": trained_model, "NO_MODEL": str(tmp_path),
             "CSV": mixed_inputs["csv"], "OUT": str(tmp_path / "out"), "NO_COLUMN": str(no_column),
             "ROOT": mixed_inputs["root"], "INSIDE": os.path.join(mixed_inputs["root"], "scores")}
    assert main(["batch-predict", *(names.get(a, a) for a in argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("catsdogs batch-predict: error: ") and message in err[-1]


def test_component_registers_the_predictions_as_a_dataset(trained_model, mixed_inputs, tmp_path):
    """The KFP component run by kfp.local (a subprocess, as its container runs it): outputs under the Dataset's
    URI, counts and the model's name and version in its metadata, counts in Metrics."""
    from kfp import local

    from components.batch_predict.component import batch_predict as component

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline_root"))
    task = component(source=mixed_inputs["csv"], model=trained_model)

    predictions, metrics = task.outputs["predictions"], task.outputs["metrics"]
    found, errors = _read_outputs(predictions.uri)
    assert (len(found), len(errors)) == (31, 4)
    assert {k: predictions.metadata[k] for k in ("predictions", "errors", "model", "version")} == \
        {"predictions": 31, "errors": 4, "model": "saved_model", "version": 1}
    assert predictions.metadata["summary"] == "31 predictions by version 1, 4 errors"  # components/step_summary.py
    assert metrics.metadata == {"predictions": 31, "errors": 4}


def test_truncated_jpeg_is_really_truncated(mixed_inputs):
    """The fixture's truncated file still opens as a JPEG header: the error must come from decoding."""
    truncated = mixed_inputs["bad"][1]
    assert Image.open(io.BytesIO(open(truncated, "rb").read())).format == "JPEG"


def test_gcs_images_model_and_output_in_a_bucket(gcs_bucket, trained_model, mixed_inputs, answers):
    """Beam's own GCS IO lists and reads the images and writes the outputs; the model version is read from the
    bucket; a second run replaces the first's files and leaves nothing staged (fake-gcs-server)."""
    from components import storage

    images, base, out = f"{gcs_bucket}/images", f"{gcs_bucket}/models/catsdogs", f"{gcs_bucket}/scores"
    storage.copy_tree(mixed_inputs["root"], images)
    storage.copy_tree(trained_model, f"{base}/3")
    storage.write_text(f"{out}/README.txt", "not ours\n")

    for _ in range(2):
        summary = batch_predict(images, base, out)
        assert (summary.predictions, summary.errors, summary.version) == (31, 3, 3)
    names = list(storage.walk_files(out))
    assert "README.txt" in names and not [n for n in names if n.startswith(".staging")]
    assert "_catsdogs_manifest.json" in names
    assert sorted({rel.split("/", 1)[0] for rel in storage.walk_files(gcs_bucket)}) == ["images", "models", "scores"]
    written = [n for n in names if n not in ("README.txt", "_catsdogs_manifest.json")]
    assert {n.split("-")[0] for n in written} == {"predictions", "errors"}
    lines = [json.loads(line) for n in written if n.startswith("predictions-")
             for line in storage.read_text(f"{out}/{n}").splitlines()]
    local = {p["image_uri"].replace(images, mixed_inputs["root"]): p for p in lines}
    _check_against_model([{**p, "image_uri": uri} for uri, p in local.items()], answers, "catsdogs", 3)


def test_a_rerun_replaces_its_own_shards_and_keeps_other_files(trained_model, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # An earlier run's second shard, listed in its manifest: ours to replace.
    (out / "predictions-00001-of-00002.jsonl").write_text('{"image_uri": "from an older run"}\n')
    (out / "_catsdogs_manifest.json").write_text(json.dumps(
        {"tool": "catsdogs batch-predict", "state": "complete", "files": ["predictions-00001-of-00002.jsonl"]}))
    (out / "notes.txt").write_text("mine\n")
    batch_predict(mixed_inputs["csv"], trained_model, str(out))
    names = sorted(os.listdir(out))
    assert "predictions-00001-of-00002.jsonl" not in names and "notes.txt" in names
    predictions, errors = _read_outputs(str(out))
    assert (len(predictions), len(errors)) == (31, 4)


def test_a_newest_version_that_does_not_load_is_skipped_like_serving_does(trained_model, mixed_inputs, answers,
                                                                         tmp_path):
    """`catsdogs batch-predict` (a fresh process) on a model base whose newest version is broken: version 1
    scores the images, and one warning line names version 2."""
    import subprocess
    import sys

    base = tmp_path / "models" / "catsdogs"
    shutil.copytree(trained_model, base / "1")
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")
    out = str(tmp_path / "out")
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "batch-predict", mixed_inputs["root"], "--model",
                           str(base), "--output-dir", out], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line and "version 2" in line]
    assert len(warnings) == 1 and "skipping version 2" in warnings[0], done.stderr[-3000:]
    predictions, _ = _read_outputs(out)
    _check_against_model(predictions, answers, "catsdogs", 1)


# --- through the command: outputs owned by one run, the user's files, listings and reads -------------------------

CATSDOGS = os.path.join(os.path.dirname(sys.executable), "catsdogs")


def catsdogs(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([CATSDOGS, *argv], capture_output=True, text=True, cwd=cwd, timeout=600)


def _one_error_line(result: subprocess.CompletedProcess, *named: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("catsdogs batch-predict: error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in named:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def _tree(folder) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


def test_the_users_files_named_like_shards_are_never_deleted(trained_model, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = {"predictions-march-of-2025.jsonl": b'{"mine": 1}\n', "errors-of-mine.csv": b"a,b\n", "notes.txt": b"x"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    for _ in range(2):
        result = catsdogs("batch-predict", mixed_inputs["csv"], "--model", trained_model, "--output-dir", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (out / name).read_bytes() for name in mine} == mine
    manifest = json.loads((out / "_catsdogs_manifest.json").read_text())
    assert manifest["tool"] == "catsdogs batch-predict" and manifest["files"]
    assert sorted(os.listdir(out)) == sorted([*mine, *manifest["files"], "_catsdogs_manifest.json"])
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging folder or lock left beside it


def test_a_shard_it_did_not_write_is_refused_and_left_alone(trained_model, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions-00000-of-00001.jsonl").write_text('{"image_uri": "another tool\'s"}\n')
    before = _tree(out)
    result = catsdogs("batch-predict", mixed_inputs["csv"], "--model", trained_model, "--output-dir", str(out))
    _one_error_line(result, "predictions-00000-of-00001.jsonl", "did not write")
    assert _tree(out) == before


def test_a_folder_another_run_is_writing_is_refused(trained_model, mixed_inputs, tmp_path):
    from components import outputs
    from components.batch_predict.core import KIND

    out = tmp_path / "out"
    with outputs.locked(outputs.resolve(str(out)), KIND):  # this test process is the other run
        result = catsdogs("batch-predict", mixed_inputs["csv"], "--model", trained_model, "--output-dir", str(out))
        _one_error_line(result, str(out), "is being written by catsdogs batch-predict", f"pid {os.getpid()}")
    assert not out.exists()
    result = catsdogs("batch-predict", mixed_inputs["csv"], "--model", trained_model, "--output-dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_dangling_symlink_lands_in_the_errors(trained_model, mixed_inputs, tmp_path):
    source = tmp_path / "images"
    shutil.copytree(mixed_inputs["root"], source)
    (source / "cats").mkdir(exist_ok=True)
    (source / "cats" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    result = catsdogs("batch-predict", str(source), "--model", trained_model, "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    predictions, errors = _read_outputs(str(tmp_path / "out"))
    assert (len(predictions), len(errors)) == (31, 4)
    (gone,) = [e for e in errors if e["image_uri"] == str(source / "cats" / "gone.jpg")]
    assert gone["reason"].startswith("cannot read file")


@pytest.mark.parametrize("source, output", [
    ("images", "./images/out"),
    ("images", "{tmp}/images/out"),
    ("./images/", "images/out"),
    ("{tmp}/images", "./images//train/out"),
    ("images", "link/out"),  # a symlink to images
])
def test_an_output_inside_the_source_is_refused_however_it_is_spelled(source, output, mixed_inputs, tmp_path):
    shutil.copytree(mixed_inputs["root"], tmp_path / "images")
    (tmp_path / "link").symlink_to(tmp_path / "images")
    before = _tree(tmp_path)
    source, output = source.format(tmp=tmp_path), output.format(tmp=tmp_path)
    result = catsdogs("batch-predict", source, "--model", str(tmp_path / "no-model"), "--output-dir", output,
                      cwd=tmp_path)
    _one_error_line(result, output, "is inside SOURCE")
    assert _tree(tmp_path) == before


def test_an_endless_file_in_a_csv_is_an_error_row(trained_model, mixed_inputs, tmp_path):
    csv_path = tmp_path / "images.csv"
    csv_path.write_text(f"image_uri\n{mixed_inputs['readable'][0]}\n/dev/zero\n")
    result = catsdogs("batch-predict", str(csv_path), "--model", trained_model, "--output-dir", str(tmp_path / "out"),
                      "--max-file-bytes", "1000000")
    assert result.returncode == 0, result.stderr[-3000:]
    predictions, errors = _read_outputs(str(tmp_path / "out"))
    assert [p["image_uri"] for p in predictions] == [mixed_inputs["readable"][0]]
    assert errors == [{"image_uri": "/dev/zero",
                       "reason": "file is larger than the 1000000-byte limit (--max-file-bytes)"}]
