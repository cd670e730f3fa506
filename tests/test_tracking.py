"""W&B tracking with the real SDK, offline (no account, no network): one run per step with the seed's artifact
names read back from the run files, the key kept out of everything written, online failing fast without a
reachable server, and the Vertex wiring checked by compiling."""

import base64
import glob
import json
import os
import socket
import struct
import threading
import time
from http.server import HTTPServer

import pytest
import yaml
from fake_rest import JsonHandler

from components import tracking
from components.errors import InputError
from pipelines.cli import main

FAKE_KEY = "fake0123456789abcdef0123456789abcdef0123"  # 40 characters, like a real key
# Enough images and epochs for a model that beats always answering one class (the deploy gate); a TEST
# split of 12 per class holds one image, which no model can beat a constant guess on.
FAST = ["--per-class", "40", "--epochs", "3", "--image-size", "32", "--batch-size", "8"]
BLOCK = 32768  # the .wandb file is a LevelDB-style log of protobuf records in 32 KiB blocks


def run_records(path: str):
    """The protobuf records of an offline run's .wandb file (what `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a record header never straddles blocks: the tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (kind, length) == (0, 0):
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_run(path: str) -> dict:
    run = {"config": {}, "artifacts": {}, "history": set(), "exit_code": None}
    for record in run_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(name=record.run.display_name, job_type=record.run.job_type, group=record.run.run_group,
                       project=record.run.project)
            run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "artifact":
            entries = {e.path: e.ref for e in record.artifact.manifest.contents}
            run["artifacts"][record.artifact.name] = (record.artifact.type, entries)
        elif kind == "history":
            run["history"].update(i.key or i.nested_key[0] for i in record.history.item)  # media: nested
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def offline_runs(workdir: str) -> dict[str, dict]:
    import wandb

    wandb.teardown()  # waits for W&B's service to finish writing the runs of this process
    runs = [read_run(p) for p in sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb")))]
    by_name = {run["name"]: run for run in runs}
    assert len(by_name) == len(runs), "one run per step"
    return by_name


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """A fake key in the environment, and a home directory to check that W&B writes nothing there."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


@pytest.mark.slow
def test_offline_pipeline_run_leaves_one_run_per_step_with_the_seeds_artifacts_and_no_key(wandb_env, capfd):
    workdir = str(wandb_env / "w")
    assert main(["run", "--workdir", workdir, *FAST, "--wandb-mode", "offline",
                 "--wandb-project", "cats-dogs-test"]) == 0

    runs = offline_runs(workdir)
    assert set(runs) == {"prepare", "validate", "convert", "train", "evaluate", "deploy"}
    assert {name: run["job_type"] for name, run in runs.items()} == {
        "prepare": "data", "validate": "data", "convert": "data", "train": "train", "evaluate": "train",
        "deploy": "deploy"}
    groups = {run["group"] for run in runs.values()}
    assert len(groups) == 1 and groups.pop().startswith("catsdogs-local-")  # the pipeline run
    assert {run["project"] for run in runs.values()} == {"cats-dogs-test"}
    assert {run["exit_code"] for run in runs.values()} == {0}

    def artifact(step, name):
        kind, entries = runs[step]["artifacts"][name]
        return kind, set(entries.values())

    kind, refs = artifact("prepare", "image_uris_csv")
    assert kind == "dataset" and refs == {""}  # a file, uploaded
    kind, refs = artifact("convert", "tfrecords")
    assert kind == "dataset" and all(r.startswith("file://") for r in refs)  # references to the shards
    assert any(r.endswith(".tfrecord") for r in refs)
    kind, refs = artifact("train", "model")
    assert kind == "model" and any(r.endswith("/saved_model.pb") for r in refs)
    kind, refs = artifact("deploy", "endpoint")
    assert kind == "endpoint" and refs == {""}

    # Offline, inputs are references in the config (use_artifact needs the server).
    inputs = {name: set(run["config"].get("inputs", {})) for name, run in runs.items()}
    assert inputs == {"prepare": {"training_images"}, "convert": {"image_uris_csv"},
                      "validate": {"image_uris_csv", "tfrecords"}, "train": {"tfrecords"},
                      "evaluate": {"model", "tfrecords"}, "deploy": {"model"}}
    # convert's records -> validate -> the records training reads (validate's, less what --fix would drop)
    converted = runs["validate"]["config"]["inputs"]["tfrecords"]
    assert converted.endswith("/convert/tfrecords") and runs["train"]["config"]["inputs"]["tfrecords"].endswith(
        "/validate/tfrecords")
    kind, refs = artifact("validate", "tfrecords")
    assert kind == "dataset" and any(r.endswith(".tfrecord") for r in refs)
    assert runs["prepare"]["config"]["inputs"]["training_images"] == f"file://{workdir}/sample"
    assert runs["train"]["config"]["epochs"] == 3 and runs["train"]["config"]["image_size"] == 32
    assert {"epoch/accuracy", "epoch/loss"} <= runs["train"]["history"]  # WandbMetricsLogger
    assert {"test/accuracy", "confusion_matrix_table", "predictions"} <= runs["evaluate"]["history"]

    output = capfd.readouterr()
    assert FAKE_KEY not in output.out + output.err
    for folder, _, files in os.walk(workdir):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert FAKE_KEY.encode() not in f.read(), os.path.join(folder, name)
    home = wandb_env / "home"
    assert not [p for p, _, _ in os.walk(home) if "wandb" in p]


def test_offline_step_logs_small_outputs_as_files_and_big_ones_as_references(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(wandb_env))
    csv = wandb_env / "images.csv"
    csv.write_text("split,image_uri,label\nTRAIN,a.jpg,cats\n")
    (wandb_env / "records").mkdir()
    (wandb_env / "records" / "train-00000-of-00001.tfrecord").write_bytes(b"x")
    settings = {"mode": "offline", "project": "p", "group": "g"}
    with tracking.step_run("convert", "data", settings, {"num_shards": 1}) as run:
        run.use("image_uris_csv", str(csv))
        run.log_output("tfrecords", str(wandb_env / "records"), {"rows": 1})
    (recorded,) = offline_runs(str(wandb_env)).values()
    assert (recorded["name"], recorded["job_type"], recorded["group"]) == ("convert", "data", "g")
    assert recorded["config"]["inputs"] == {"image_uris_csv": csv.as_uri()}
    assert recorded["artifacts"]["tfrecords"] == (
        "dataset",
        {"train-00000-of-00001.tfrecord": (wandb_env / "records" / "train-00000-of-00001.tfrecord").as_uri()})


def test_a_vertex_step_groups_its_run_by_the_pipeline_runs_id_from_its_environment(wandb_env, monkeypatch):
    """On Vertex the settings every step takes carry no run name (it would make every step miss the cache): the
    step's W&B run finds its pipeline run's id in the labels Vertex hands each step (what GCPC's launchers read),
    so the steps of one run share a group, and a cached step's artifacts link the next run's steps by digest."""
    monkeypatch.setenv("WANDB_DIR", str(wandb_env))
    labels = {"vertex-ai-pipelines-run-billing-id": "4242", "other": "x"}
    monkeypatch.setenv(tracking.VERTEX_RUN_LABELS, json.dumps(labels))
    settings = tracking.settings("p", "offline", pipeline_run="")  # as the Vertex pipeline's first step makes them
    with tracking.step_run("prepare", "data", settings, {}):
        pass
    (recorded,) = offline_runs(str(wandb_env)).values()
    assert recorded["group"] == "vertex-4242"
    assert tracking.run_group({"group": "mine"}) == "mine"  # a group given as a parameter wins


def test_a_failing_step_finishes_its_run_as_failed(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(wandb_env))
    with pytest.raises(InputError, match="bad row"):
        with tracking.step_run("prepare", "data", {"mode": "offline"}, {}):
            raise InputError("bad row")
    (recorded,) = offline_runs(str(wandb_env)).values()
    assert recorded["exit_code"] == 1 and recorded["project"] == tracking.PROJECT


def test_disabled_mode_writes_nothing(wandb_env, monkeypatch):
    monkeypatch.chdir(wandb_env)
    with tracking.step_run("train", "train", {"mode": "disabled"}, {"epochs": 1}) as run:
        run.use("tfrecords", str(wandb_env))
        assert run.keras_callbacks() == []
    assert not glob.glob(str(wandb_env / "**" / "*wandb*"), recursive=True)


def test_online_run_without_a_reachable_server_fails_in_seconds_with_a_clear_message(wandb_env, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())
    started = time.monotonic()
    code = main(["run", "--workdir", str(wandb_env / "w"), "--per-class", "2", "--wandb-mode", "online"])
    err = capsys.readouterr().err
    assert time.monotonic() - started < 60  # wandb.init alone would retry for minutes
    assert code == 2
    assert "W&B online mode cannot reach" in err and "--wandb-mode offline" in err
    assert FAKE_KEY not in err
    assert not os.path.exists(wandb_env / "w" / "pipeline_root")  # stopped before any step ran


def test_an_online_step_fails_fast_too_and_without_a_key_says_where_to_put_one(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", closed_port_url())
    started = time.monotonic()
    with pytest.raises(InputError, match="cannot reach") as failure:
        with tracking.step_run("evaluate", "train", {"mode": "online"}, {}):
            pass
    assert time.monotonic() - started < 60 and FAKE_KEY not in str(failure.value)
    monkeypatch.delenv("WANDB_API_KEY")
    with pytest.raises(InputError, match="needs an API key: set WANDB_API_KEY"):
        with tracking.step_run("evaluate", "train", {"mode": "online"}, {}):
            pass


def test_default_mode_is_online_only_with_a_key(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert tracking.default_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    assert tracking.default_mode() == "offline"
    with pytest.raises(InputError, match="--wandb-mode must be one of"):
        tracking.check_mode("sometimes")


class FakeSecretManager(JsonHandler):
    """Secret Manager's REST API: access returns the fake key for `wandb-key`, 404 for anything else."""
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        if "/secrets/wandb-key/" in self.path:
            status, body = 200, {"name": "x", "payload": {"data": base64.b64encode(FAKE_KEY.encode() + b"\n").decode()}}
        else:
            status, body = 404, {"error": {"code": 404, "message": "Secret not found", "status": "NOT_FOUND"}}
        self.reply_json(body, status)


def test_the_key_is_read_from_secret_manager_at_run_time():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import secretmanager

    assert tracking.secret_version("wandb-key", "proj") == "projects/proj/secrets/wandb-key/versions/latest"
    assert tracking.secret_version("projects/p/secrets/s", "") == "projects/p/secrets/s/versions/latest"
    assert tracking.secret_version("projects/p/secrets/s/versions/3", "") == "projects/p/secrets/s/versions/3"
    with pytest.raises(InputError, match="give projects/PROJECT/secrets/NAME"):
        tracking.secret_version("wandb-key", "")

    server = HTTPServer(("127.0.0.1", 0), FakeSecretManager)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = secretmanager.SecretManagerServiceClient(
            credentials=AnonymousCredentials(), transport="rest",
            client_options={"api_endpoint": f"http://127.0.0.1:{server.server_port}"})
        assert tracking.read_secret("projects/proj/secrets/wandb-key/versions/latest", client) == FAKE_KEY
        assert FakeSecretManager.requests[-1].startswith("/v1/projects/proj/secrets/wandb-key/versions/latest:access")
        missing = "Secret Manager projects/proj/secrets/other/versions/latest: .*Secret not found"
        with pytest.raises(InputError, match=missing):
            tracking.read_secret("projects/proj/secrets/other/versions/latest", client)
    finally:
        server.shutdown()
        server.server_close()


def test_vertex_pipeline_takes_wandb_parameters_and_never_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    path = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(path)]) == 0
    text = path.read_text()
    assert FAKE_KEY not in text
    compiled = yaml.safe_load(text)
    params = compiled["root"]["inputDefinitions"]["parameters"]
    assert {name: params[name].get("defaultValue") for name in params if name.startswith("wandb_")} == {
        "wandb_project": "cats-dogs-keras", "wandb_mode": "disabled", "wandb_secret": "", "wandb_group": ""}
    from test_pipeline_vertex import Dag

    dag = Dag(compiled)
    # The settings are made at run time by the first step from plain parameters (no placeholders nested in a
    # constant), and every step takes that step's output.
    settings = dag.parameters("W&B settings")
    # No run name: every step takes these settings, and a per-run input would make every step miss the cache.
    assert settings["pipeline_run"]["runtimeValue"]["constant"] == ""
    assert settings["secret"] == {"componentInputParameter": "wandb_secret"}
    assert settings["gcp_project"] == {"componentInputParameter": "project"}
    settings_id = dag.ids["W&B settings"]
    for step in ("prepare CSV", "validate data", "convert to TFRecords (Dataflow)", "train (T4_1X x1)",
                 "evaluate vs champion"):
        assert dag.parameters(step)["wandb_settings"]["taskOutputParameter"]["producerTask"] == settings_id, step
    deploy = dag.parameters("record deployment (W&B)")["wandb_settings"]
    assert deploy["componentInputParameter"].startswith(f"pipelinechannel--{settings_id}-")
    # The deploy record (run after the deploy, never cached) names the Vertex job its W&B group belongs to.
    job = dag.parameters("record deployment (W&B)")["pipeline_job"]
    assert job["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    assert "deploy to endpoint" in dag.depends_on("record deployment (W&B)")
