"""`catsdogs deploy` and `catsdogs predict` against Vertex AI, up to the request (nothing here reaches GCP)."""

import base64
import json
import os

import pytest

from components.deploy.vertex import allocate_traffic
from pipelines.cli import main

ENDPOINT = "projects/my-project/locations/europe-west4/endpoints/1234"
REGISTRY = "europe-west4-docker.pkg.dev/my-project/catsdogs"
DEPLOY = ["deploy", "gs://bucket/runs/7/model", "--project", "my-project", "--location", "europe-west4",
          "--images-registry", REGISTRY, "--images-tag", "abc123"]


def _printed_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_predict_dry_run_prints_the_sdks_request_for_a_vertex_endpoint(sample_images, capsys):
    paths = [os.path.join(sample_images, label, f"{label}.00001.jpg") for label in ("cats", "dogs")]
    assert main(["predict", *paths, "--endpoint", ENDPOINT, "--dry-run", "--json"]) == 0
    printed = _printed_json(capsys)
    assert printed["api_endpoint"] == "europe-west4-aiplatform.googleapis.com"
    assert printed["method"] == "PredictionService.Predict"
    assert printed["request"]["endpoint"] == ENDPOINT
    sent = [base64.b64decode(instance["b64"]) for instance in printed["request"]["instances"]]
    assert sent == [open(p, "rb").read() for p in paths]


def test_predict_dry_run_for_a_server_url_prints_url_and_body(sample_images, capsys):
    path = os.path.join(sample_images, "cats", "cats.00001.jpg")
    assert main(["predict", path, "--endpoint", "http://127.0.0.1:9", "--dry-run", "--json"]) == 0
    printed = _printed_json(capsys)
    assert printed["url"] == "http://127.0.0.1:9/predict"
    assert base64.b64decode(printed["body"]["instances"][0]["b64"]) == open(path, "rb").read()


def test_predict_refuses_an_endpoint_that_is_neither(sample_images, capsys):
    path = os.path.join(sample_images, "cats", "cats.00001.jpg")
    assert main(["predict", path, "--endpoint", "projects/p/endpoints/1", "--dry-run"]) == 2
    assert "projects/P/locations/L/endpoints/E" in capsys.readouterr().err


def test_deploy_dry_run_prints_every_request_in_order(capsys):
    assert main([*DEPLOY, "--version-aliases", "v2,candidate", "--machine-type", "n1-standard-4",
                 "--min-replicas", "1", "--max-replicas", "3", "--dry-run"]) == 0
    printed = _printed_json(capsys)
    assert printed["api_endpoint"] == "europe-west4-aiplatform.googleapis.com"
    calls = {call["method"].split()[0]: call["request"] for call in printed["calls"]}
    assert list(calls) == ["ModelService.ListModels", "ModelService.UploadModel", "EndpointService.ListEndpoints",
                           "EndpointService.CreateEndpoint", "EndpointService.DeployModel",
                           "EndpointService.GetEndpoint", "EndpointService.UndeployModel"]
    parent = "projects/my-project/locations/europe-west4"
    assert calls["ModelService.ListModels"]["parent"] == parent
    assert calls["ModelService.ListModels"]["filter"] == 'display_name="catsdogs"'
    upload = calls["ModelService.UploadModel"]
    assert upload["parent"] == parent and "ListModels" in upload["parentModel"]
    assert upload["model"]["artifactUri"] == "gs://bucket/runs/7/model"
    assert upload["model"]["versionAliases"] == ["v2", "candidate", "default"]
    assert upload["model"]["containerSpec"] == {
        "imageUri": f"{REGISTRY}/catsdogs-serving:abc123", "healthRoute": "/health", "predictRoute": "/predict",
        "ports": [{"containerPort": 8080}],
    }
    assert calls["EndpointService.ListEndpoints"]["filter"] == 'display_name="catsdogs"'
    assert calls["EndpointService.CreateEndpoint"] == {"parent": parent, "endpoint": {"displayName": "catsdogs"}}
    deploy = calls["EndpointService.DeployModel"]
    assert deploy["deployedModel"]["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-standard-4"}, "minReplicaCount": 1, "maxReplicaCount": 3}
    assert deploy["trafficSplit"] == {"0": 100}
    assert calls["EndpointService.UndeployModel"]["endpoint"] == calls["EndpointService.GetEndpoint"]["name"]
    assert "trafficSplit" not in calls["EndpointService.UndeployModel"], "an idle model's undeploy leaves the split"


def test_deploy_dry_run_with_a_traffic_share_keeps_the_rest_for_the_endpoints_models(capsys):
    assert main([*DEPLOY, "--traffic-percent", "10", "--dry-run"]) == 0
    [deploy] = [c for c in _printed_json(capsys)["calls"] if c["method"] == "EndpointService.DeployModel"]
    split = deploy["request"]["trafficSplit"]
    assert split["0"] == 10 and sum(split.values()) == 100


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-replicas", "3", "--max-replicas", "2"], "min (3) <= max (2)"),
        (["--traffic-percent", "0"], "1..100"),
        (["--version-aliases", "V2"], "aliases ['V2']"),
        (["--version-aliases", "default"], "not be 'default'"),
        (["--keep-previous", "-1"], "keep previous must be 0 or more"),
    ],
    ids=["replicas", "traffic", "alias", "default-alias", "keep"],
)
def test_deploy_refuses_bad_settings_before_any_request(extra, message, capsys):
    assert main([*DEPLOY, *extra, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_deploy_needs_a_gcs_model_and_a_registry_image(capsys):
    local = ["deploy", "work/model", "--project", "p", "--location", "us-central1", "--images-registry", REGISTRY]
    assert main([*local, "--dry-run"]) == 2
    assert "MODEL_DIR must be gs://" in capsys.readouterr().err
    assert main([*DEPLOY[:-4], "--images-registry", "", "--dry-run"]) == 2
    assert "--images-registry" in capsys.readouterr().err


def test_deploy_explains_itself(capsys):
    with pytest.raises(SystemExit):
        main(["deploy", "--help"])
    assert "--traffic-percent" in capsys.readouterr().out


@pytest.mark.parametrize(
    "current, percent, expected",
    [
        ({}, 100, {"0": 100}),
        ({"a": 100}, 100, {"a": 0, "0": 100}),
        ({"a": 100}, 25, {"a": 75, "0": 25}),
        ({"a": 50, "b": 50}, 33, {"a": 34, "b": 33, "0": 33}),
        ({"a": 100, "old": 0}, 50, {"a": 50, "0": 50}),
    ],
)
def test_traffic_is_shared_like_the_sdk_does(current, percent, expected):
    assert allocate_traffic(current, percent) == expected


def test_a_first_model_must_take_all_traffic():
    from components.errors import InputError

    with pytest.raises(InputError, match="serves no model yet"):
        allocate_traffic({}, 50)


class FakeVertexEndpoints:
    """A local stand-in for Vertex AI's REST API, as far as undeploying goes: GET an endpoint, POST
    :undeployModel (which refuses a model that takes traffic, as Vertex does) answered with a finished operation."""

    def __init__(self, endpoint: dict):
        self.endpoint = endpoint
        self.calls: list[tuple[str, str, dict]] = []

    def handle(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        self.calls.append((method, path, body))
        name = self.endpoint["name"]
        if method == "GET" and path == f"/v1/{name}":
            return 200, self.endpoint
        if method == "POST" and path == f"/v1/{name}:undeployModel":
            model_id = body["deployedModelId"]
            if self.endpoint.get("trafficSplit", {}).get(model_id, 0):
                return 400, {"error": {"code": 400, "message": "model takes traffic", "status": "FAILED_PRECONDITION"}}
            self.endpoint["deployedModels"] = [m for m in self.endpoint["deployedModels"] if m["id"] != model_id]
            return 200, {"name": f"{name}/operations/{len(self.calls)}", "done": True, "response": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UndeployModelResponse"}}
        return 404, {"error": {"code": 404, "message": f"no {method} {path}", "status": "NOT_FOUND"}}


@pytest.fixture
def fake_vertex():
    """(fake, client): an EndpointServiceClient over REST to a FakeVertexEndpoints on 127.0.0.1."""
    import threading
    from http.server import ThreadingHTTPServer

    from fake_rest import JsonHandler
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform_v1

    def deployed(model_id: str, version: int, day: int, name: str = "catsdogs") -> dict:
        return {"id": model_id, "model": f"projects/my-project/locations/europe-west4/models/77@{version}",
                "displayName": name, "createTime": f"2026-01-{day:02d}T00:00:00Z",
                "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1}}

    fake = FakeVertexEndpoints({
        "name": ENDPOINT, "displayName": "catsdogs",
        "deployedModels": [deployed("101", 1, 1), deployed("102", 2, 2), deployed("103", 3, 3),
                           deployed("104", 4, 4), deployed("900", 1, 1, name="someone-elses")],
        "trafficSplit": {"104": 100, "101": 0},
    })

    class Handler(JsonHandler):
        def _serve(self):
            status, reply = fake.handle(self.command, self.path.split("?")[0], self.read_json())
            self.reply_json(reply, status)

        do_GET = do_POST = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = aiplatform_v1.EndpointServiceClient(
        transport="rest", credentials=AnonymousCredentials(),
        client_options={"api_endpoint": f"http://127.0.0.1:{server.server_address[1]}"})
    yield fake, client
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("keep, left", [(0, {"104"}), (1, {"104", "103"}), (5, {"101", "102", "103", "104"})])
def test_undeploy_previous_leaves_the_serving_model_and_keep_newest_idle_ones(fake_vertex, keep, left):
    from components.deploy.vertex import undeploy_previous

    fake, client = fake_vertex
    undeployed = undeploy_previous("my-project", "europe-west4", ENDPOINT, "catsdogs", keep, client=client)
    ours = {m["id"] for m in fake.endpoint["deployedModels"] if m["displayName"] == "catsdogs"}
    assert ours == left
    assert set(undeployed) == {"101", "102", "103", "104"} - left
    assert "900" in {m["id"] for m in fake.endpoint["deployedModels"]}, "another model's deployment was undeployed"
    requests = [(path, body) for method, path, body in fake.calls if method == "POST"]
    assert requests == [(f"/v1/{ENDPOINT}:undeployModel", {"deployedModelId": i}) for i in undeployed]
    assert undeployed == sorted(undeployed), "oldest first, so that a run cut short keeps the newest for rollback"


def test_undeploy_previous_refuses_a_negative_keep_and_another_projects_endpoint(fake_vertex):
    from components.deploy.vertex import undeploy_previous
    from components.errors import InputError

    fake, client = fake_vertex
    with pytest.raises(InputError, match="keep must be 0 or more"):
        undeploy_previous("my-project", "europe-west4", ENDPOINT, "catsdogs", -1, client=client)
    with pytest.raises(InputError, match="not in projects/other-project"):
        undeploy_previous("other-project", "europe-west4", ENDPOINT, "catsdogs", 0, client=client)
    assert not [call for call in fake.calls if call[0] == "POST"]


def test_undeploy_previous_component_reads_the_endpoint_artifact(fake_vertex, monkeypatch):
    # The pipeline step around the core: its endpoint input as find_or_create_endpoint writes it.
    from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint

    from components.deploy import vertex
    from components.deploy.component import undeploy_previous

    fake, client = fake_vertex
    monkeypatch.setattr(vertex, "_client", lambda client_class, location: client)  # the fake API, not Google's
    endpoint = VertexEndpoint(name="endpoint", uri=f"https://europe-west4-aiplatform.googleapis.com/v1/{ENDPOINT}",
                              metadata={"resourceName": ENDPOINT})
    assert undeploy_previous.python_func(project="my-project", location="europe-west4", endpoint=endpoint,
                                         model_display_name="catsdogs", keep=1) == 2
    assert {m["id"] for m in fake.endpoint["deployedModels"]} == {"103", "104", "900"}
