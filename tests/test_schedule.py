"""The batch-prediction pipeline compiled, and schedules built up to the request (no credentials, no network)."""

import json

import pytest
import yaml

from pipelines.cli import main

REGISTRY = "europe-west4-docker.pkg.dev/my-project/catsdogs"
VERTEX = ["--project", "my-project", "--region", "europe-west4"]
CREATE = [*VERTEX, "--pipeline-root", "gs://bucket/root", "--images", "gs://bucket/images"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("batch") / "batch.yaml"
    assert main(["compile", "--pipeline", "batch-predict", "--output", str(path), "--images-registry", REGISTRY,
                 "--images-tag", "abc123"]) == 0
    return yaml.safe_load(path.read_text())


def test_batch_pipeline_runs_the_beam_job_on_dataflow_with_the_components_image(compiled):
    assert compiled["pipelineInfo"]["name"] == "catsdogs-batch-predict"
    tasks = compiled["root"]["dag"]["tasks"]
    assert set(tasks) == {"batch-predict", "resolve-model"}
    params = tasks["batch-predict"]["inputs"]["parameters"]
    assert params["runner"]["runtimeValue"]["constant"] == "DataflowRunner"
    assert params["dataflow_sdk_container_image"]["runtimeValue"]["constant"] == \
        f"{REGISTRY}/catsdogs-components:abc123"
    assert params["source"] == {"componentInputParameter": "images_root"}
    # The model is resolved when the run starts (a Vertex model's `default` version: a schedule follows the champion).
    assert params["model"]["taskOutputParameter"]["producerTask"] == "resolve-model"
    assert tasks["resolve-model"]["inputs"]["parameters"]["model"] == {"componentInputParameter": "model"}
    assert tasks["resolve-model"]["cachingOptions"].get("enableCache", False) is False
    assert params["dataflow_project"] == {"componentInputParameter": "project"}
    assert tasks["batch-predict"]["cachingOptions"].get("enableCache", False) is False
    image = compiled["deploymentSpec"]["executors"]["exec-batch-predict"]["container"]["image"]
    assert image == f"{REGISTRY}/catsdogs-components:abc123"


def test_batch_pipeline_output_is_a_dataset_artifact_with_described_inputs(compiled):
    component = compiled["components"]["comp-batch-predict"]
    outputs = component["outputDefinitions"]["artifacts"]
    assert outputs["predictions"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    for name, spec in component["inputDefinitions"]["parameters"].items():
        assert spec.get("description"), f"{name} has no Args: description"


def test_submit_dry_run_of_the_batch_pipeline_scores_with_the_vertex_models_champion_or_a_given_model(capsys):
    argv = ["submit", "--pipeline", "batch-predict", *CREATE, "--dry-run"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["runtimeConfig"]["parameterValues"].get("model", "catsdogs") == \
        "catsdogs"  # the Vertex model the training pipeline uploads to
    assert main([*argv, "--param", "model=gs://bucket/models/catsdogs"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["templateName"] == "catsdogs-batch-predict"
    assert request["runtimeConfig"]["parameterValues"]["model"] == "gs://bucket/models/catsdogs"
    assert request["runtimeConfig"]["parameterValues"]["images_root"] == "gs://bucket/images"


@pytest.mark.parametrize("pipeline, template, params", [
    ("training", "catsdogs", ["--param", "epochs=20"]),
    ("batch-predict", "catsdogs-batch-predict", ["--param", "model=gs://bucket/models/catsdogs"]),
])
def test_schedule_dry_run_prints_the_create_request_with_the_cron(pipeline, template, params, capsys):
    assert main(["schedule", "--cron", "0 3 * * 1", "--pipeline", pipeline, *CREATE, *params,
                 "--service-account", "runner@my-project.iam.gserviceaccount.com", "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["method"] == "ScheduleService.CreateSchedule"
    assert request["parent"] == "projects/my-project/locations/europe-west4"
    body = request["schedule"]
    assert body["cron"] == "0 3 * * 1"
    assert body["displayName"] == f"catsdogs-{pipeline}"
    assert int(body["maxConcurrentRunCount"]) == 1
    job = body["createPipelineJobRequest"]["pipelineJob"]
    assert job["templateName"] == template
    assert job["labels"]["app"] == "catsdogs"
    assert job["serviceAccount"] == "runner@my-project.iam.gserviceaccount.com"
    values = job["runtimeConfig"]["parameterValues"]
    assert values["images_root"] == "gs://bucket/images" and values["project"] == "my-project"
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/root"
    key, value = params[1].split("=")
    assert str(values[key]) in (value, f"{value}.0")


def test_schedule_list_and_delete_dry_runs(capsys):
    assert main(["schedule", *VERTEX, "--list", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["parent"] == "projects/my-project/locations/europe-west4"
    assert main(["schedule", *VERTEX, "--delete", "123", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "projects/my-project/locations/europe-west4/schedules/123"


@pytest.mark.parametrize("argv, message", [
    (["--cron", "0 3 * *", *CREATE[4:]], "not a cron expression"),
    (["--cron", "every monday", *CREATE[4:]], "not a cron expression"),
    ([*CREATE[4:]], "needs --cron"),
    (["--cron", "0 3 * * 1", "--max-concurrent-runs", "0", *CREATE[4:]], "--max-concurrent-runs"),
    (["--cron", "0 3 * * 1", "--pipeline-root", "/local", "--images", "gs://b/i"], "gs://"),
    (["--delete", "my schedule"], "schedule ID"),
])
def test_schedule_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["schedule", *VERTEX, *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("catsdogs schedule: error: ") and message in err[-1]


def test_cron_with_a_time_zone_is_accepted(capsys):
    assert main(["schedule", "--cron", "CRON_TZ=Europe/Paris 0 3 * * MON", *CREATE, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["schedule"]["cron"] == "CRON_TZ=Europe/Paris 0 3 * * MON"


class FakeScheduleService:
    """Vertex AI's ScheduleService over REST on 127.0.0.1 (create, list, get, delete), playing the cloud's part
    for the aiplatform SDK; it records every request."""

    def __init__(self):
        import re
        import threading
        from http.server import ThreadingHTTPServer

        from fake_rest import JsonHandler

        self.schedules, self.requests = {}, []
        service = self

        class Handler(JsonHandler):
            def _name(self) -> str:
                return self.path.split("?")[0][len("/v1/"):]

            def do_POST(self):
                body = self.read_json()
                service.requests.append(("POST", self._name(), body))
                parent = re.fullmatch(r"(projects/[^/]+/locations/[^/]+)/schedules", self._name())[1]
                name = f"{parent}/schedules/{len(service.schedules) + 1}"
                service.schedules[name] = {**body, "name": name, "state": "ACTIVE"}
                self.reply_json(service.schedules[name])

            def do_GET(self):
                service.requests.append(("GET", self._name(), None))
                if self._name().endswith("/schedules"):
                    return self.reply_json({"schedules": list(service.schedules.values())})
                if self._name() not in service.schedules:
                    return self.reply_json({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}, 404)
                return self.reply_json(service.schedules[self._name()])

            def do_DELETE(self):
                service.requests.append(("DELETE", self._name(), None))
                service.schedules.pop(self._name())
                self.reply_json({"name": f"{self._name()}/operations/1", "done": True,
                                 "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vertex(monkeypatch):
    """The SDK pointed at the fake service (REST transport), with credentials that need no Google account; the
    SDK's global configuration is restored afterwards."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform import initializer

    fake = FakeScheduleService()
    config = initializer.global_config  # what aiplatform.init(api_endpoint=..., api_transport="rest", ...) sets
    for name, value in (("_api_endpoint", fake.url), ("_api_transport", "rest"),
                        ("_credentials", AnonymousCredentials())):
        monkeypatch.setattr(config, name, value)
    yield fake
    fake.stop()


def test_schedule_create_sends_what_the_dry_run_prints_then_list_and_delete(vertex, capsys):
    argv = ["schedule", "--cron", "0 3 * * 1", *CREATE, "--param", "epochs=20"]
    assert main([*argv, "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    assert "created projects/my-project/locations/europe-west4/schedules/1" in capsys.readouterr().out

    method, parent, sent = vertex.requests[-1]
    assert (method, parent) == ("POST", printed["parent"] + "/schedules")
    sent_job = sent["createPipelineJobRequest"]["pipelineJob"]
    assert sent_job.pop("pipelineSpec")["pipelineInfo"]["name"] == "catsdogs"
    printed_job = printed["schedule"]["createPipelineJobRequest"]["pipelineJob"]
    assert printed_job.pop("templateName") == "catsdogs"
    assert sent == printed["schedule"]

    assert main(["schedule", *VERTEX, "--list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(s["display_name"], s["cron"]) for s in listed] == [("catsdogs-training", "0 3 * * 1")]
    assert main(["schedule", *VERTEX, "--delete", "1"]) == 0
    assert vertex.requests[-1][:2] == ("DELETE", "projects/my-project/locations/europe-west4/schedules/1")
    assert vertex.schedules == {}


def test_schedule_delete_refuses_a_schedule_catsdogs_did_not_create(vertex, capsys):
    name = "projects/my-project/locations/europe-west4/schedules/7"
    vertex.schedules[name] = {"name": name, "displayName": "someone-elses", "cron": "0 1 * * *",
                              "createPipelineJobRequest": {"pipelineJob": {"labels": {"team": "other"}}}}
    assert main(["schedule", *VERTEX, "--delete", name]) == 2
    assert "not created by catsdogs" in capsys.readouterr().err
    assert name in vertex.schedules
    assert all(method != "DELETE" for method, _, _ in vertex.requests)


@pytest.mark.parametrize("command", ["batch-predict", "schedule"])
def test_new_commands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: catsdogs " + command in capsys.readouterr().out
