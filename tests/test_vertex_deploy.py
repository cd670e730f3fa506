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
    assert main(["predict", *paths, "--endpoint", ENDPOINT, "--dry-run"]) == 0
    printed = _printed_json(capsys)
    assert printed["api_endpoint"] == "europe-west4-aiplatform.googleapis.com"
    assert printed["method"] == "PredictionService.Predict"
    assert printed["request"]["endpoint"] == ENDPOINT
    sent = [base64.b64decode(instance["b64"]) for instance in printed["request"]["instances"]]
    assert sent == [open(p, "rb").read() for p in paths]


def test_predict_dry_run_for_a_server_url_prints_url_and_body(sample_images, capsys):
    path = os.path.join(sample_images, "cats", "cats.00001.jpg")
    assert main(["predict", path, "--endpoint", "http://127.0.0.1:9", "--dry-run"]) == 0
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
                           "EndpointService.CreateEndpoint", "EndpointService.DeployModel"]
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


def test_deploy_dry_run_with_a_traffic_share_keeps_the_rest_for_the_endpoints_models(capsys):
    assert main([*DEPLOY, "--traffic-percent", "10", "--dry-run"]) == 0
    split = _printed_json(capsys)["calls"][-1]["request"]["trafficSplit"]
    assert split["0"] == 10 and sum(split.values()) == 100


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--min-replicas", "3", "--max-replicas", "2"], "min (3) <= max (2)"),
        (["--traffic-percent", "0"], "1..100"),
        (["--version-aliases", "V2"], "aliases ['V2']"),
        (["--version-aliases", "default"], "not be 'default'"),
    ],
    ids=["replicas", "traffic", "alias", "default-alias"],
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
