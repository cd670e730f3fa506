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
    assert list(calls) == ["ModelService.ListModels", "ModelService.GetModel", "ModelService.UploadModel",
                           "EndpointService.ListEndpoints",
                           "EndpointService.CreateEndpoint", "EndpointService.DeployModel",
                           "EndpointService.GetEndpoint", "EndpointService.UndeployModel"]
    parent = "projects/my-project/locations/europe-west4"
    assert calls["ModelService.ListModels"]["parent"] == parent
    assert calls["ModelService.ListModels"]["filter"] == 'display_name="catsdogs"'
    assert calls["ModelService.GetModel"]["name"].endswith("@canary")
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
    # A share of the traffic makes it the canary: the champion keeps `default` until `catsdogs promote`.
    assert main([*DEPLOY, "--traffic-percent", "10", "--dry-run"]) == 0
    [upload] = [c for c in _printed_json(capsys)["calls"] if c["method"] == "ModelService.UploadModel"]
    assert upload["request"]["model"]["versionAliases"] == ["canary"]


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


MODEL = "projects/my-project/locations/europe-west4/models/77"


class FakeVertexRegistry:
    """Vertex AI's REST API as far as the canary lifecycle goes: a model with versions and aliases (ListModels,
    GetModel by @alias, MergeVersionAliases with Vertex's rules: one `default` per model, "-alias" removes) and an
    endpoint (ListEndpoints, GetEndpoint, UpdateEndpoint's traffic split, UndeployModel, which refuses a model that
    would still take traffic)."""

    def __init__(self):
        self.versions = {
            "1": {"aliases": ["default"], "artifactUri": "gs://b/models/1"},
            "2": {"aliases": ["canary"], "artifactUri": "gs://b/models/2"},
            "3": {"aliases": ["challenger"], "artifactUri": "gs://b/models/3"},
        }
        self.endpoint = {
            "name": ENDPOINT, "displayName": "catsdogs",
            "deployedModels": [
                {"id": "200", "model": MODEL, "modelVersionId": "1", "displayName": "catsdogs",
                 "createTime": "2026-01-01T00:00:00Z"},  # an idle older deployment
                {"id": "201", "model": MODEL, "modelVersionId": "1", "displayName": "catsdogs",
                 "createTime": "2026-01-02T00:00:00Z"},
                {"id": "202", "model": MODEL, "modelVersionId": "2", "displayName": "catsdogs",
                 "createTime": "2026-01-03T00:00:00Z"},
                {"id": "900", "model": "projects/my-project/locations/europe-west4/models/5", "modelVersionId": "1",
                 "displayName": "someone-elses", "createTime": "2026-01-01T00:00:00Z"},
            ],
            "trafficSplit": {"201": 90, "202": 10},
        }
        self.calls: list[tuple[str, str, dict]] = []

    def model(self, version: str) -> dict:
        return {"name": MODEL, "displayName": "catsdogs", "versionId": version,
                "versionAliases": self.versions[version]["aliases"],
                "artifactUri": self.versions[version]["artifactUri"]}

    def handle(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        from urllib.parse import unquote

        path, _, query = unquote(path).partition("?")
        self.calls.append((method, path, body))
        parent = "/v1/projects/my-project/locations/europe-west4"
        if method == "GET" and path == f"{parent}/models":
            named = 'display_name="catsdogs"' in unquote(query.replace("+", " "))
            return 200, {"models": [self.model(max(self.versions, key=int))] if named else []}
        if method == "GET" and path.startswith(f"/v1/{MODEL}@"):
            ref = path.split("@", 1)[1]
            found = [v for v, info in self.versions.items() if ref == v or ref in info["aliases"]]
            return (200, self.model(found[0])) if found else (404, {"error": {"code": 404, "status": "NOT_FOUND",
                                                                              "message": f"no version {ref}"}})
        if method == "POST" and path.startswith(f"/v1/{MODEL}@") and path.endswith(":mergeVersionAliases"):
            version = path.split("@", 1)[1].split(":")[0]
            for alias in body["versionAliases"]:
                if alias.startswith("-"):
                    self.versions[version]["aliases"].remove(alias[1:])
                    continue
                for info in self.versions.values():  # an alias names one version: it moves
                    if alias in info["aliases"]:
                        info["aliases"].remove(alias)
                self.versions[version]["aliases"].append(alias)
            assert sum("default" in info["aliases"] for info in self.versions.values()) == 1
            return 200, self.model(version)
        if method == "GET" and path == f"{parent}/endpoints":
            return 200, {"endpoints": [self.endpoint]}
        if method == "GET" and path == f"/v1/{ENDPOINT}":
            return 200, self.endpoint
        if method == "PATCH" and path == f"/v1/{ENDPOINT}":
            split = body["trafficSplit"]
            assert sum(split.values()) == 100 and set(split) <= {m["id"] for m in self.endpoint["deployedModels"]}
            self.endpoint["trafficSplit"] = split
            return 200, self.endpoint
        if method == "POST" and path == f"/v1/{ENDPOINT}:undeployModel":
            model_id = body["deployedModelId"]
            split = body.get("trafficSplit") or self.endpoint["trafficSplit"]
            if split.get(model_id, 0):
                return 400, {"error": {"code": 400, "message": "model takes traffic", "status": "FAILED_PRECONDITION"}}
            self.endpoint["trafficSplit"] = {k: v for k, v in split.items() if k != model_id}
            self.endpoint["deployedModels"] = [m for m in self.endpoint["deployedModels"] if m["id"] != model_id]
            return 200, {"name": f"{ENDPOINT}/operations/{len(self.calls)}", "done": True, "response": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.UndeployModelResponse"}}
        return 404, {"error": {"code": 404, "message": f"no {method} {path}", "status": "NOT_FOUND"}}


@pytest.fixture
def fake_registry(monkeypatch):
    """A FakeVertexRegistry on 127.0.0.1, which every Vertex client the code makes talks to (over REST)."""
    import threading
    from http.server import ThreadingHTTPServer

    from fake_rest import JsonHandler
    from google.auth.credentials import AnonymousCredentials

    from components.deploy import vertex

    fake = FakeVertexRegistry()

    class Handler(JsonHandler):
        def _serve(self):
            status, reply = fake.handle(self.command, self.path, self.read_json())
            self.reply_json(reply, status)

        do_GET = do_POST = do_PATCH = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(vertex, "_client", lambda client_class, location: client_class(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}))
    yield fake
    server.shutdown()
    server.server_close()


CANARY = ["--project", "my-project", "--location", "europe-west4"]


def _champion() -> str:
    from components.deploy.registry import default_version_uri

    return default_version_uri("my-project", "europe-west4", "catsdogs")


def test_a_canary_shares_the_traffic_while_default_stays_on_the_champion(fake_registry):
    assert _champion() == "gs://b/models/1"  # evaluation and batch prediction read `default`, not the canary


def test_promote_moves_default_and_all_the_traffic_to_the_canary_and_undeploys_the_rest(fake_registry, capsys):
    assert main(["promote", *CANARY]) == 0
    assert "promoted projects/my-project/locations/europe-west4/models/77@2" in capsys.readouterr().out
    assert fake_registry.endpoint["trafficSplit"] == {"202": 100}
    assert {m["id"] for m in fake_registry.endpoint["deployedModels"]} == {"202", "900"}
    assert fake_registry.versions["2"]["aliases"] == ["default"] and fake_registry.versions["1"]["aliases"] == []
    assert _champion() == "gs://b/models/2"
    methods = [(m, p.rsplit(":", 1)[-1] if ":" in p else m) for m, p, _ in fake_registry.calls if m != "GET"]
    assert methods[0] == ("PATCH", "PATCH"), "the canary takes all the traffic before anything is undeployed"
    # Nothing left to promote: one clear line, exit 2.
    assert main(["promote", *CANARY]) == 2
    assert "has no canary version to promote" in capsys.readouterr().err


def test_rollback_undeploys_the_canary_and_gives_its_traffic_back(fake_registry, capsys):
    assert main(["rollback", *CANARY]) == 0
    assert "rolled back projects/my-project/locations/europe-west4/models/77@2" in capsys.readouterr().out
    assert fake_registry.endpoint["trafficSplit"] == {"201": 100}
    assert {m["id"] for m in fake_registry.endpoint["deployedModels"]} == {"200", "201", "900"}
    assert fake_registry.versions["2"]["aliases"] == [] and fake_registry.versions["1"]["aliases"] == ["default"]
    assert _champion() == "gs://b/models/1"
    assert main(["rollback", *CANARY]) == 2
    assert "has no canary version to roll back" in capsys.readouterr().err


def test_a_new_version_retires_the_earlier_canary_first(fake_registry):
    from components.deploy.vertex import new_version_plan

    assert new_version_plan("my-project", "europe-west4", "catsdogs", "catsdogs", 10) == "canary"
    assert fake_registry.endpoint["trafficSplit"] == {"201": 100}, "the earlier canary was left deployed"
    assert "canary" not in fake_registry.versions["2"]["aliases"]
    assert new_version_plan("my-project", "europe-west4", "catsdogs", "catsdogs", 100) == "default"


def test_the_canary_percent_is_checked_before_anything_is_uploaded(tmp_path):
    import yaml

    from components.deploy.registry_components import check_canary_percent
    from components.errors import InputError

    for bad in (0, 101):
        with pytest.raises(InputError, match="1..100"):
            check_canary_percent.python_func(canary_traffic_percent=bad)
    path = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(path)]) == 0
    from test_pipeline_vertex import Dag

    dag = Dag(yaml.safe_load(path.read_text()))
    uploads = [name for name in dag.tasks if name.startswith("upload")]
    assert len(uploads) == 3, uploads
    for upload in uploads:  # it, or a condition it is inside (KFP hoists a dependency on an outer task there)
        task, after = upload, set()
        while task:
            after |= dag.depends_on(task)
            task = dag.parent[task]
        assert "check canary traffic percent" in after, upload


def test_the_pipelines_promote_option_promotes_before_the_champion_is_looked_up(fake_registry, tmp_path):
    import yaml

    from components.deploy.registry_components import promote_canary

    args = dict(project="my-project", location="europe-west4", model_display_name="catsdogs",
                endpoint_display_name="catsdogs")
    assert promote_canary.python_func(**args, enabled=False) == ""
    assert fake_registry.versions["2"]["aliases"] == ["canary"], "promoted though not asked"
    assert promote_canary.python_func(**args, enabled=True) == f"{MODEL}@2"
    assert _champion() == "gs://b/models/2"
    path = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(path)]) == 0
    from test_pipeline_vertex import Dag

    dag = Dag(yaml.safe_load(path.read_text()))
    assert "promote canary (if asked)" in dag.depends_on("find champion (default version)")
    assert dag.parameters("promote canary (if asked)")["enabled"] == {"componentInputParameter": "promote_canary"}


def test_batch_prediction_resolves_a_vertex_model_to_its_default_versions_artifact(fake_registry):
    """The batch pipeline's `model`: a display name or resource name follows `default` (the champion) when the run
    starts, so a schedule scores with whatever was promoted last; @VERSION / @ALIAS and gs:// paths as given."""
    from components.deploy.registry_components import resolve_model
    from components.errors import InputError

    def resolve(model: str) -> str:
        return resolve_model.python_func(project="my-project", location="europe-west4", model=model)

    assert resolve("catsdogs") == resolve(MODEL) == "gs://b/models/1"
    assert resolve(f"{MODEL}@2") == resolve(f"{MODEL}@canary") == "gs://b/models/2"
    assert resolve("gs://bucket/models/catsdogs") == "gs://bucket/models/catsdogs"
    with pytest.raises(InputError, match="no Vertex AI model named 'dogs-only'"):
        resolve("dogs-only")
    assert main(["promote", *CANARY]) == 0
    assert resolve("catsdogs") == resolve(MODEL) == "gs://b/models/2"  # the schedule follows the champion


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_canary_commands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: catsdogs {command}" in out and "--model-display-name" in out
