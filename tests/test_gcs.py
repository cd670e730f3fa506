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
from components.errors import InputError
from components.model_store import publish_version, versions
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


def test_gcs_validate_from_facts_hands_on_the_records_less_a_leaked_copy(gcs_bucket, gcs_images, capsys):
    """convert --facts, then validate --facts --fix --records-out, all in a bucket: the shards without a dropped
    row are copied server-side, the one holding the leaked copy is rewritten without it."""
    csv_path = f"{gcs_bucket}/images.csv"
    prepare_csv(gcs_images, csv_path, train_fraction=0.6, validation_fraction=0.2)
    rows = _rows(csv_path)
    test = next(r for r in rows if r["split"] == "TEST")
    leaked = f"{gcs_images}/{test['label']}/leaked.jpg"  # a TRAIN copy of a TEST image
    storage.write_bytes(leaked, storage.read_bytes(test["image_uri"]))
    storage.write_text(csv_path, storage.read_text(csv_path) + f"TRAIN,{leaked},{test['label']}\n")
    converted, records, report = (f"{gcs_bucket}/{name}" for name in ("converted", "records", "validation"))
    assert main(["convert", csv_path, "--output-dir", converted, "--facts", "--num-shards", "2"]) == 0
    assert main(["validate", csv_path, "--output-dir", report, "--facts", converted, "--fix",
                 "--records-out", records]) == 0
    assert "1 left out by --fix" in capsys.readouterr().out
    before, after = inspect_records(converted, "test", 100), inspect_records(records, "test", 100)
    name = test["image_uri"].rsplit("/", 1)[-1]
    assert f": {name} " in before
    assert f": {name} " not in after and after.count("TEST #") == before.count("TEST #") - 1
    shards = sorted(f for f in storage.walk_files(records) if ".tfrecord" in f)
    assert shards == sorted(f for f in storage.walk_files(converted) if ".tfrecord" in f) and len(shards) == 6


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
    assert 1 <= len(predictions) <= 4 and all(line.strip().startswith(gcs_images) for line in predictions)


def test_gcs_run_refuses_a_gcs_workdir(tmp_path, capsys):
    assert main(["run", "--workdir", "gs://bucket/w", *FAST]) == 2
    assert "workdir must be a local folder" in capsys.readouterr().err
    assert not os.path.exists("gs:")


class ObjectsOnlyGcs:
    """A GCS JSON API for a caller with object roles only (roles/storage.objectAdmin, objectViewer): objects are
    listed and read, the bucket's own metadata (storage.buckets.get) is refused with 403, as GCS does."""

    def __init__(self, objects: dict[str, bytes]):
        import threading
        from http.server import ThreadingHTTPServer
        from urllib.parse import parse_qs, unquote, urlsplit

        from tests.fake_rest import JsonHandler

        fake = self
        self.requests: list[str] = []

        class Handler(JsonHandler):
            def do_GET(self):
                url = urlsplit(self.path)
                fake.requests.append(url.path)
                parts = url.path.split("/")  # ['', 'storage', 'v1', 'b', BUCKET, 'o', NAME...]
                if url.path.startswith("/download/"):
                    body = objects[unquote(url.path.split("/o/", 1)[1])]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif len(parts) == 5:
                    denied = "caller does not have storage.buckets.get access to the Google Cloud Storage bucket"
                    self.reply_json({"error": {"code": 403, "message": denied}}, 403)
                elif len(parts) == 6 and parts[5] == "o":
                    prefix = parse_qs(url.query).get("prefix", [""])[0]
                    names = sorted(n for n in objects if n.startswith(prefix))
                    limit = int(parse_qs(url.query).get("maxResults", [len(names) or 1])[0])
                    self.reply_json({"kind": "storage#objects", "items": [
                        {"name": n, "bucket": parts[4], "size": str(len(objects[n]))} for n in names[:limit]]})
                else:
                    name = unquote("/".join(parts[6:]))
                    if name in objects:
                        self.reply_json({"name": name, "bucket": parts[4], "size": str(len(objects[name]))})
                    else:
                        self.reply_json({"error": {"code": 404, "message": "No such object"}}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_images_at_a_bucket_root_are_found_with_object_roles_only(tmp_path, monkeypatch):
    """`catsdogs prepare --images gs://BUCKET` where the caller may list and read objects but not get the bucket:
    bucket.exists() needs storage.buckets.get, which roles/storage.objectAdmin lacks (403)."""
    import subprocess
    import sys

    objects = {f"{label}/{i}.jpg": b"\xff\xd8 not read by prepare" for label in ("cat", "dog") for i in range(5)}
    fake = ObjectsOnlyGcs(objects)
    try:
        out = tmp_path / "images.csv"
        env = {**os.environ, "STORAGE_EMULATOR_HOST": fake.url, "GOOGLE_CLOUD_PROJECT": "my-project"}
        result = subprocess.run([sys.executable, "-m", "pipelines.cli", "prepare", "gs://only-objects",
                                 "--output", str(out)], capture_output=True, text=True, env=env, timeout=120)
    finally:
        fake.close()
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _rows(str(out))
    assert sorted(r["image_uri"] for r in rows) == sorted(f"gs://only-objects/{name}" for name in objects)


def _cancelled_states() -> tuple:
    from google.cloud.dataflow_v1beta3 import JobState

    # Google's REST clients send enums as numbers (use_integers_for_enums); the API takes either.
    return "JOB_STATE_CANCELLED", JobState.JOB_STATE_CANCELLED.value


CANCELLED = _cancelled_states()


class FakeDataflow:
    """Dataflow's REST API (v1b3) as far as launching, watching and cancelling a job goes: the job Beam creates
    stays RUNNING (no worker runs it) until an update asks for JOB_STATE_CANCELLED."""

    def __init__(self):
        import threading
        from http.server import ThreadingHTTPServer

        from tests.fake_rest import JsonHandler

        fake = self
        self.calls: list[tuple[str, str, dict]] = []
        self.jobs: dict[str, dict] = {}

        class Handler(JsonHandler):
            def _serve(self):
                path = self.path.split("?")[0]
                body = self.read_json() if self.command in ("POST", "PUT") else {}
                fake.calls.append((self.command, path, body))
                parts = path.split("/")  # ['', 'v1b3', 'projects', P, 'locations', L, 'jobs', ID, ...]
                if self.command == "POST" and len(parts) == 7 and parts[6] == "jobs":
                    job_id = f"2026-12-04_00_00_00-{len(fake.jobs) + 1}"
                    fake.jobs[job_id] = {**body, "id": job_id, "projectId": parts[3], "location": parts[5],
                                         "currentState": "JOB_STATE_RUNNING"}
                    self.reply_json(fake.jobs[job_id])
                elif len(parts) >= 8 and parts[7] in fake.jobs:
                    job = fake.jobs[parts[7]]
                    if self.command == "PUT":
                        if body.get("requestedState") in CANCELLED:
                            job["currentState"] = "JOB_STATE_CANCELLED"
                        self.reply_json(job)
                    elif len(parts) == 9:  # messages, metrics
                        self.reply_json({})
                    else:
                        self.reply_json(job)
                else:
                    self.reply_json({"error": {"code": 404, "message": f"no {path}", "status": "NOT_FOUND"}}, 404)

            do_GET = do_POST = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        # Beam talks REST (not gRPC) to an endpoint named localhost (apiclient.py, DataflowApplicationClient).
        self.url = f"http://localhost:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow  # Beam's Dataflow launch (staging included) takes about a minute on 2 busy cores
def test_gcs_convert_on_dataflow_reports_its_job_and_a_sigterm_cancels_it(gcs_bucket, local_images, tmp_path):
    """The convert step as Vertex runs it (its compiled command, an executor input), with Beam's DataflowRunner
    launching the job on a fake Dataflow: the job appears in the step's gcp_resources in GCPC's format while it
    runs, and a SIGTERM to the step (Vertex cancelling the run) cancels the job, leaving the output as it was."""
    import json
    import signal
    import subprocess
    import sys
    import time

    import yaml

    csv_path, out = tmp_path / "images.csv", tmp_path / "records"
    prepare_csv(local_images, str(csv_path), train_fraction=0.6, validation_fraction=0.2)
    pipeline = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(pipeline)]) == 0
    spec = yaml.safe_load(pipeline.read_text())["deploymentSpec"]["executors"]["exec-convert"]["container"]
    program = tmp_path / "ephemeral_component.py"
    program.write_text(spec["command"][3])  # what KFP's `sh -ec` wrapper writes and hands to python
    resources = tmp_path / "gcp_resources"
    executor_input = {
        "inputs": {
            "parameterValues": {"runner": "DataflowRunner", "dataflow_project": "my-project",
                                "dataflow_region": "europe-west4", "dataflow_temp_location": f"{gcs_bucket}/tmp"},
            "artifacts": {"image_csv": {"artifacts": [{"name": "image_csv", "uri": str(csv_path), "metadata": {},
                                                       "type": {"schemaTitle": "system.Dataset"}}]}}},
        "outputs": {
            "artifacts": {name: {"artifacts": [{"name": name, "uri": str(tmp_path / name), "metadata": {},
                                                "type": {"schemaTitle": kind}}]}
                          for name, kind in (("tfrecords", "system.Dataset"), ("metrics", "system.Metrics"))},
            "parameters": {"gcp_resources": {"outputFile": str(resources)}},
            "outputFile": str(tmp_path / "executor_output.json")},
    }
    executor_input["outputs"]["artifacts"]["tfrecords"]["artifacts"][0]["uri"] = str(out)
    dataflow = FakeDataflow()
    executor_input["inputs"]["parameterValues"]["dataflow_endpoint"] = dataflow.url
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in spec["args"]]
    step = subprocess.Popen([sys.executable, "-m", "kfp.dsl.executor_main", "--component_module_path", str(program),
                             *args], env={**os.environ, "_KFP_RUNTIME": "true", "VERTEX_AI_PIPELINES_RUN_LABELS":
                                          json.dumps({"vertex-ai-pipelines-run-billing-id": "4242"})},
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300  # a guard against hanging, not a speed requirement
        while not dataflow.jobs or json.loads(resources.read_text() or "{}") == {}:
            assert step.poll() is None, step.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no Dataflow job was reported"
            time.sleep(0.5)
        (job_id,) = dataflow.jobs
        assert json.loads(resources.read_text()) == {"resources": [{
            "resourceType": "DataflowJob",
            "resourceUri": f"https://dataflow.googleapis.com/v1b3/projects/my-project/locations/europe-west4/jobs/"
                           f"{job_id}"}]}
        # The run's labels reach the job, as Vertex asks of steps that create cloud resources.
        assert dataflow.jobs[job_id]["labels"]["vertex-ai-pipelines-run-billing-id"] == "4242"
        step.send_signal(signal.SIGTERM)
        output = step.communicate(timeout=120)[0]
    finally:
        if step.poll() is None:
            step.kill()
        dataflow.close()
    assert step.returncode == 128 + signal.SIGTERM, output[-4000:]
    cancels = [(path, body) for method, path, body in dataflow.calls if method == "PUT"]
    assert cancels and cancels[-1][1]["requestedState"] in CANCELLED, dataflow.calls
    assert cancels[-1][0] == f"/v1b3/projects/my-project/locations/europe-west4/jobs/{job_id}"
    assert not out.exists() or not list(out.glob("*.tfrecord*")), "a cancelled conversion left records"
