"""Every stage, and the local pipeline, on gs:// paths against a real GCS server (fake-gcs-server, started by the
gcs_emulator fixture; tests/gcs_harness.py says how each client reaches it)."""

import csv
import io
import os

import pytest
from PIL import Image

from components import storage
from components.convert.inspect import inspect_records
from components.convert.pipeline import convert
from components.deploy.core import publish_version, versions
from components.errors import InputError
from components.prepare import prepare_csv
from components.prepare.core import scan_images
from components.sample_data import generate_sample
from components.serve.client import predict_files
from components.serve.server import make_server, serve_in_background
from pipelines.cli import main

FAST = ["--epochs", "1", "--image-size", "32", "--batch-size", "8"]


@pytest.fixture
def local_images(tmp_path) -> str:
    root = str(tmp_path / "images")
    generate_sample(root, per_class=12)
    return root


@pytest.fixture
def gcs_images(gcs_bucket, local_images) -> str:
    root = f"{gcs_bucket}/images"
    storage.copy_tree(local_images, root)
    return root


def _rows(csv_path: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(storage.read_text(csv_path))))


def test_gcs_prepare_reads_the_folder_not_names_that_start_like_it(gcs_bucket, gcs_images, local_images, tmp_path):
    # Objects whose names merely start with the root's name are not below it.
    old = storage.read_bytes(f"{gcs_images}/cats/cats.00000.jpg")
    storage.write_bytes(f"{gcs_bucket}/images-old/cats/old.jpg", old)
    assert not storage.exists(f"{gcs_bucket}/image")
    assert not storage.exists(f"{gcs_images}/cats/cats.00000.jp")
    assert storage.exists(f"{gcs_images}/cats/cats.00000.jpg") and storage.exists(f"{gcs_images}/cats/")
    with pytest.raises(InputError, match="does not exist"):
        scan_images(f"{gcs_bucket}/image")

    csv_path = f"{gcs_bucket}/csv/images.csv"
    counts = prepare_csv(gcs_images, csv_path)
    # The same tree gives the same rows locally and in the bucket: the split hashes the path below the root.
    assert counts == prepare_csv(local_images, str(tmp_path / "local.csv"))
    local_rows = list(csv.DictReader(open(tmp_path / "local.csv")))
    assert [{**r, "image_uri": r["image_uri"].replace(local_images, gcs_images)} for r in local_rows] == _rows(csv_path)


def test_gcs_convert_writes_shards_and_errors_replaces_old_shards_and_inspects(gcs_bucket, gcs_images):
    csv_path = f"{gcs_bucket}/images.csv"
    prepare_csv(gcs_images, csv_path, train_fraction=0.6, validation_fraction=0.2)
    missing = f"{gcs_images}/cats/missing.jpg"
    storage.write_text(csv_path, storage.read_text(csv_path) + f"TRAIN,{missing},cats\n")
    out = f"{gcs_bucket}/tfrecords"

    summary = convert(csv_path, out, num_shards=2)
    assert (summary.good, summary.bad) == (24, 1)
    shards = [f for f in storage.walk_files(out) if ".tfrecord" in f]
    assert len(shards) == 6 and all(f.endswith("-of-00002.tfrecord") for f in shards)
    errors = _rows(f"{out}/errors-00000-of-00001.csv")
    assert [e["image_uri"] for e in errors] == [missing]

    convert(csv_path, out, num_shards=1)  # a re-run with fewer shards must not leave the old ones beside the new
    assert sorted(f for f in storage.walk_files(out) if ".tfrecord" in f) == [
        "test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord", "validation-00000-of-00001.tfrecord"]

    png_dir = f"{gcs_bucket}/png"
    report = inspect_records(out, "train", num_records=2, output_dir=png_dir)
    expected = ", ".join(f"{split} {summary.per_split.get(split, 0)}" for split in ("TRAIN", "VALIDATION", "TEST"))
    assert f"records: {expected}" in report
    pngs = storage.list_dir(png_dir)
    assert len(pngs) == 2 and all(p.startswith("train-") and p.endswith(".png") for p in pngs)
    assert Image.open(io.BytesIO(storage.read_bytes(f"{png_dir}/{pngs[0]}"))).format == "PNG"


def test_gcs_stages_by_hand_then_serving_from_aip_storage_uri(gcs_bucket, gcs_images, monkeypatch, capsys):
    csv_path, data, model = f"{gcs_bucket}/images.csv", f"{gcs_bucket}/tfrecords", f"{gcs_bucket}/train/model"
    assert main(["prepare", gcs_images, "--output", csv_path]) == 0
    assert main(["convert", csv_path, "--output-dir", data]) == 0
    assert main(["train", "--data", data, "--model-dir", model, *FAST]) == 0
    assert "accuracy" in capsys.readouterr().out  # evaluated from the SavedModel in the bucket
    assert storage.exists(f"{model}/saved_model.pb") and storage.exists(f"{model}/training.json")
    assert not storage.exists(f"{model}/backup")  # BackupAndRestore removes its checkpoint when training ends

    base = f"{gcs_bucket}/models/catsdogs"
    assert publish_version(model, base) == 1
    assert publish_version(model, base) == 2
    assert versions(base) == [1, 2]
    monkeypatch.setenv("AIP_STORAGE_URI", base)
    server = make_server(port=0, poll_seconds=0)
    serve_in_background(server)
    try:
        assert (server.model.name, server.model.version) == ("catsdogs", 2)
        images = [f"{gcs_images}/cats/cats.00000.jpg", f"{gcs_images}/dogs/dogs.00000.jpg"]
        predictions = predict_files(images, server.url)
        assert [set(p["probabilities"]) for p in predictions] == [{"cats", "dogs"}] * 2
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_gcs_run_pipeline_with_images_and_model_versions_in_a_bucket(gcs_bucket, tmp_path, capsys):
    # Enough images and epochs for a model that beats always answering one class (the deploy gate).
    generate_sample(str(tmp_path / "images"), per_class=40)
    gcs_images = f"{gcs_bucket}/images"
    storage.copy_tree(str(tmp_path / "images"), gcs_images)
    base = f"{gcs_bucket}/models/catsdogs"
    workdir = str(tmp_path / "w")
    assert main(["run", gcs_images, "--workdir", workdir, "--model-base", base, "--epochs", "3", "--image-size", "32",
                 "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert f"version 1 at {base}/1" in out  # the summary row "deployed   version 1 at ..."
    assert storage.exists(f"{base}/1/saved_model.pb")
    assert not os.path.exists(os.path.join(workdir, "models"))
    predictions = out.split("predictions from", 1)[1].splitlines()[1:]
    assert len(predictions) == 4 and all(line.strip().startswith(gcs_images) for line in predictions)


def test_gcs_run_refuses_a_gcs_workdir(tmp_path, capsys):
    assert main(["run", "--workdir", "gs://bucket/w", *FAST]) == 2
    assert "workdir must be a local folder" in capsys.readouterr().err
    assert not os.path.exists("gs:")
