"""Champion/challenger: the decision rule, scoring the champion on the candidate's records, the evaluate step's
outputs, and the Model Registry requests (up to the request: a fake Vertex REST API plays the cloud's part)."""

import json
import math
import os
import shutil
import threading
import urllib.parse
from http.server import HTTPServer

import pytest
from fake_rest import JsonHandler
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Metrics, Model

from components.errors import InputError
from components.evaluate.champion import (
    MIN_ACCURACY,
    decide,
    decision_from_metrics,
    find_champion,
    score_champion,
    summary_line,
)
from components.evaluate.core import evaluate
from components.model_store import publish_version

# -- the decision ------------------------------------------------------------------------------------------------


def test_a_better_candidate_is_published():
    decision = decide(0.92, 0.90, min_accuracy=0.5)
    assert decision.publish and "0.9200" in decision.reason and "0.9000" in decision.reason


def test_a_worse_candidate_is_not_published_and_the_line_names_both_scores_and_the_kept_version():
    decision = decide(0.85, 0.90, min_accuracy=0.5)
    assert not decision.publish
    line = summary_line(decision, "3")
    assert "not deployed" in line and "0.8500" in line and "0.9000" in line and "version 3 stays deployed" in line


def test_a_tie_is_published_and_max_regression_allows_a_small_drop():
    assert decide(0.9, 0.9, min_accuracy=0.5).publish
    assert not decide(0.85, 0.9, min_accuracy=0.5, max_regression=0.04).publish
    # exactly at the limit: 0.9 - 0.05 is 0.8500000000000001 in floating point, and must not reject 0.85
    assert decide(0.85, 0.9, min_accuracy=0.5, max_regression=0.05).publish


def test_the_first_run_is_decided_by_min_accuracy_alone():
    first = decide(0.6, None, min_accuracy=0.5)
    assert first.publish and first.champion_accuracy is None
    assert "deployed" in summary_line(first, None) and "champion" not in summary_line(first, None).split(":")[1]
    below = decide(0.4, None, min_accuracy=0.5)
    assert not below.publish and "below --min-accuracy 0.5" in below.reason
    assert "no version is deployed" in summary_line(below, None)


def test_min_accuracy_applies_even_when_the_champion_is_worse():
    decision = decide(0.45, 0.30, min_accuracy=0.5)
    assert not decision.publish and "below --min-accuracy" in decision.reason


def test_a_nan_candidate_is_never_published_and_a_nan_champion_counts_as_none():
    assert not decide(math.nan, None, min_accuracy=0.0).publish
    assert not decide(math.nan, 0.1, min_accuracy=0.0, max_regression=1.0).publish
    assert decide(0.7, math.nan, min_accuracy=0.5).publish


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_max_regression_outside_0_1_is_refused(bad):
    with pytest.raises(InputError, match="--max-regression must be between 0 and 1"):
        decide(0.9, 0.9, 0.0, bad)


# -- finding and scoring the champion ----------------------------------------------------------------------------


def test_the_champion_is_the_newest_version_under_the_model_base_or_the_folder_itself(trained_model, tmp_path):
    base = str(tmp_path / "models" / "catsdogs")
    assert find_champion("") is None
    assert find_champion(base) is None  # no model base yet: the first run
    publish_version(trained_model, base)
    publish_version(trained_model, base)
    os.makedirs(os.path.join(base, "7"))  # a version folder without saved_model.pb is not a version
    champion = find_champion(base)
    assert champion.version == "2" and champion.model_dir == os.path.join(base, "2")
    assert find_champion(trained_model).model_dir == trained_model  # a SavedModel folder / Vertex artifact URI


def test_the_champion_is_scored_on_the_same_split_and_images_as_the_candidate(trained_model, records, tmp_path):
    candidate = evaluate(trained_model, records)
    base = str(tmp_path / "base")
    publish_version(trained_model, base)
    champion = score_champion(find_champion(base), records, candidate.split, candidate.class_names)
    assert (champion.split, champion.examples) == (candidate.split, candidate.examples)
    assert champion.confusion_matrix == candidate.confusion_matrix  # the same model on the same images


def test_a_champion_with_other_classes_is_not_comparable(trained_model, records, tmp_path):
    other = str(tmp_path / "other")
    shutil.copytree(trained_model, other)
    info_path = os.path.join(other, "training.json")
    info = json.load(open(info_path))
    info["class_names"] = ["birds", "cats", "dogs"]
    json.dump(info, open(info_path, "w"))
    assert score_champion(find_champion(other), records, "TEST", ["cats", "dogs"]) is None


def _run_evaluate(model_dir, records, out, **parameters):
    """The evaluate component's function with real artifacts, as KFP calls it."""
    from google_cloud_pipeline_components.types.artifact_types import ClassificationMetrics as VertexMetrics

    from components.evaluate.component import evaluate as component

    os.makedirs(out, exist_ok=True)
    parameters.setdefault("min_accuracy", MIN_ACCURACY)  # the pipelines always pass it
    outputs = {"metrics": Metrics(uri=os.path.join(out, "metrics")),
               "confusion": ClassificationMetrics(uri=os.path.join(out, "confusion")),
               "report": HTML(uri=os.path.join(out, "report.html")),
               "evaluation": VertexMetrics(uri=os.path.join(out, "evaluation.json"))}
    gate = component.python_func(model=Model(uri=model_dir), tfrecords=Dataset(uri=records), **outputs, **parameters)
    return gate, outputs


@pytest.fixture(scope="module")
def better_model(records, tmp_path_factory):
    """A champion trained for longer than conftest's two-epoch `trained_model`."""
    from conftest import IMAGE_SIZE

    from components.train.core import TrainConfig, train

    model_dir = str(tmp_path_factory.mktemp("better") / "saved_model")
    train(records, model_dir, TrainConfig(epochs=12, image_size=IMAGE_SIZE, batch_size=8))
    return model_dir


def test_evaluate_rejects_a_worse_candidate_and_says_so_everywhere(better_model, trained_model, records, tmp_path):
    base = str(tmp_path / "models")
    publish_version(better_model, base)
    champion_accuracy = evaluate(better_model, records).accuracy
    candidate_accuracy = evaluate(trained_model, records).accuracy
    assert candidate_accuracy < champion_accuracy, "the champion fixture must beat the candidate for this test"

    gate, out = _run_evaluate(trained_model, records, str(tmp_path / "out"), champion_uri=base)
    assert gate is False
    metrics = out["metrics"].metadata
    assert metrics["accuracy"] == candidate_accuracy and metrics["champion_accuracy"] == champion_accuracy
    assert metrics["published"] == 0.0 and metrics["champion_version"] == "1"
    written = json.load(open(out["evaluation"].uri))
    assert written["decision"]["published"] is False and written["decision"]["champion_version"] == "1"
    matrix = written["slicedMetrics"][0]["metrics"]["classification"]["confusionMatrix"]
    assert sum(map(sum, matrix["rows"])) == metrics["examples"]
    report = open(out["report"].uri).read()
    assert "not deployed" in report and f"{champion_accuracy:.4f}" in report
    line = summary_line(decision_from_metrics(metrics), metrics["champion_version"])  # what `catsdogs run` prints
    assert line.startswith("not deployed: accuracy ") and "version 1 stays" in line  # no better than a guess, too


def test_evaluate_publishes_a_tie_and_the_first_run(better_model, records, tmp_path):
    base = str(tmp_path / "models")
    gate, out = _run_evaluate(better_model, records, str(tmp_path / "first"), champion_uri=base)
    assert gate is True and "champion_accuracy" not in out["metrics"].metadata, out["metrics"].metadata
    publish_version(better_model, base)
    gate, out = _run_evaluate(better_model, records, str(tmp_path / "tie"), champion_uri=base)
    assert gate is True and out["metrics"].metadata["champion_accuracy"] == out["metrics"].metadata["accuracy"]
    gate, _ = _run_evaluate(better_model, records, str(tmp_path / "min"), champion_uri=base, min_accuracy=1.01)
    assert gate is False


def test_evaluate_never_publishes_a_model_no_better_than_a_constant_guess(trained_model, records, tmp_path):
    """conftest's two-epoch model scores below always answering the TEST split's larger class."""
    from components.evaluate.champion import majority

    scored = evaluate(trained_model, records)
    name, share = majority(scored.class_names, scored.confusion_matrix)
    assert scored.accuracy <= share, "the fixture must be no better than a constant guess for this test"
    gate, out = _run_evaluate(trained_model, records, str(tmp_path / "first"), champion_uri=str(tmp_path / "none"))
    assert gate is False
    line = summary_line(decision_from_metrics(out["metrics"].metadata), None)
    assert line == (f'not deployed: accuracy {scored.accuracy:.3f} is no better than always answering "{name}" '
                    f"({share:.3f}); no version is deployed")


# -- the Model Registry ------------------------------------------------------------------------------------------

EVALUATION = {  # a hand-made Evaluation (components/evaluate/core.py) as a dict: 6 cats, 4 dogs
    "split": "TEST", "class_names": ["cats", "dogs"], "examples": 10, "accuracy": 0.8, "auc": 0.875,
    "confusion_matrix": [[5, 1], [1, 3]],
    "roc": {"thresholds": [0.9, 0.6, 0.4, 0.1], "tpr": [0.5, 0.75, 1.0, 1.0], "fpr": [0.0, 1 / 6, 0.5, 1.0]},
}
DECISION = {"accuracy": 0.8, "champion_accuracy": 0.9, "champion_version": "gs://b/champion", "published": False,
            "reason": "accuracy 0.8000 is worse than the champion's 0.9000", "split": "TEST", "examples": 10}
MODEL = "projects/p/locations/europe-west4/models/123@2"


def test_classification_metrics_follow_vertex_schema_with_the_confusion_matrix():
    from components.deploy.registry import classification_metrics

    metrics = classification_metrics(EVALUATION)
    assert metrics["confusionMatrix"] == {
        "annotationSpecs": [{"id": "0", "displayName": "cats"}, {"id": "1", "displayName": "dogs"}],
        "rows": [[5.0, 1.0], [1.0, 3.0]]}
    assert metrics["auRoc"] == 0.875
    at = {m["confidenceThreshold"]: m for m in metrics["confidenceMetrics"]}
    # score >= 0.5 is score >= 0.6: 3 of 4 dogs, 1 of 6 cats
    assert (at[0.5]["truePositiveCount"], at[0.5]["falsePositiveCount"]) == (3, 1)
    assert at[0.5]["precision"] == 0.75 and at[0.5]["recall"] == 0.75
    assert at[0.95]["recall"] == 0.0 and at[0.0]["recall"] == 1.0


def test_gcpcs_importer_reads_our_evaluation_file_as_we_do(tmp_path):
    from google.protobuf import json_format
    from google_cloud_pipeline_components.container._implementation.model_evaluation import (
        import_model_evaluation as gcpc,
    )

    from components.deploy.registry import evaluation_file, import_evaluation_request

    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(evaluation_file(EVALUATION, DECISION)))
    overall, slices = gcpc.read_metrics_from_file(str(path), "classification")
    ours = import_evaluation_request(MODEL, json.loads(path.read_text())).model_evaluation
    assert json_format.MessageToDict(overall["metrics"]) == json_format.MessageToDict(type(ours).pb(ours).metrics)
    assert not slices


def test_the_import_request_carries_metrics_schema_and_decision():
    from components.deploy.registry import CLASSIFICATION_SCHEMA, evaluation_file, import_evaluation_request
    from components.deploy.vertex import as_json

    request = as_json(import_evaluation_request(MODEL, evaluation_file(EVALUATION, DECISION), "run 7"))
    assert request["parent"] == MODEL
    evaluation = request["modelEvaluation"]
    assert evaluation["metricsSchemaUri"] == CLASSIFICATION_SCHEMA
    assert evaluation["displayName"] == "run 7"
    assert evaluation["metrics"]["confusionMatrix"]["rows"] == [[5, 1], [1, 3]]
    assert evaluation["metadata"]["champion_accuracy"] == 0.9 and evaluation["metadata"]["published"] is False


class FakeVertex(JsonHandler):
    """Vertex AI's REST API for what the registry module calls: a model `123` whose default version is 3 at
    gs://b/models/3, an endpoint serving deployed model 111 with all the traffic, and the evaluation import."""
    requests: list[tuple[str, str, dict]] = []

    def _record(self) -> str:
        path = urllib.parse.unquote(self.path)
        self.requests.append((self.command, path, self.read_json()))
        return path

    def do_GET(self):
        path = self._record()
        models = "/v1/projects/p/locations/europe-west4/models"
        if path.startswith(models + "?") and 'display_name="catsdogs"' in path:
            self.reply_json({"models": [{"name": models[4:] + "/123", "versionId": "4"}]})
        elif path.startswith(models + "?"):
            self.reply_json({})
        elif path.startswith(models + "/123@default"):
            self.reply_json({"name": models[4:] + "/123", "versionId": "3", "artifactUri": "gs://b/models/3"})
        elif "/endpoints/9" in path:
            self.reply_json({"name": "projects/p/locations/europe-west4/endpoints/9", "trafficSplit": {"111": 100}})
        else:
            self.reply_json({"error": {"code": 404, "message": path, "status": "NOT_FOUND"}}, 404)

    def do_POST(self):
        path = self._record().split("?")[0]
        self.reply_json({"name": path[4:].replace("/evaluations:import", "/evaluations/55")})


@pytest.fixture
def fake_vertex():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform_v1

    server = HTTPServer(("127.0.0.1", 0), FakeVertex)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeVertex.requests.clear()

    def client(kind):
        return kind(credentials=AnonymousCredentials(), transport="rest",
                    client_options={"api_endpoint": f"http://127.0.0.1:{server.server_port}"})

    try:
        yield (client(aiplatform_v1.ModelServiceClient), client(aiplatform_v1.EndpointServiceClient))
    finally:
        server.shutdown()
        server.server_close()


def test_the_champion_on_vertex_is_the_default_versions_artifact(fake_vertex):
    from components.deploy.registry import default_version_uri

    models, _ = fake_vertex
    assert default_version_uri("p", "europe-west4", "catsdogs", models) == "gs://b/models/3"
    assert FakeVertex.requests[-1][1].startswith("/v1/projects/p/locations/europe-west4/models/123@default")
    assert default_version_uri("p", "europe-west4", "other", models) == ""  # no model yet: the first run


def test_the_evaluation_import_reaches_vertex_as_the_request_says(fake_vertex):
    from components.deploy.registry import evaluation_file, import_evaluation_request, send_evaluation

    models, _ = fake_vertex
    request = import_evaluation_request(MODEL, evaluation_file(EVALUATION, DECISION), "run 7")
    assert send_evaluation(request, "europe-west4", models) == MODEL + "/evaluations/55"
    method, path, body = FakeVertex.requests[-1]
    assert (method, path.split("?")[0]) == ("POST", f"/v1/{MODEL}/evaluations:import")
    assert body["modelEvaluation"]["metadata"]["reason"] == DECISION["reason"]
    assert body["modelEvaluation"]["metrics"]["confusionMatrix"]["annotationSpecs"][1]["displayName"] == "dogs"


@pytest.mark.parametrize("percent, split", [(100, {"0": 100, "111": 0}), (10, {"0": 10, "111": 90})])
def test_a_canary_keeps_the_rest_of_the_traffic_on_the_served_model(fake_vertex, percent, split):
    from components.deploy.registry import canary_split

    _, endpoints = fake_vertex
    assert canary_split("projects/p/locations/europe-west4/endpoints/9", "europe-west4", percent,
                        endpoints) == split


def test_registry_components_connect_to_evaluate_and_gcpcs_upload_in_a_compiled_pipeline(tmp_path):
    """The wiring the Vertex DAG uses: champion lookup -> evaluate -> upload -> import evaluation, canary split."""
    import yaml
    from google_cloud_pipeline_components.types import artifact_types
    from google_cloud_pipeline_components.v1.model import ModelUploadOp
    from kfp import compiler, dsl

    from components.deploy.registry import DEFAULT_ALIAS
    from components.deploy.registry_components import canary_traffic_split, champion_uri, import_evaluation
    from components.evaluate.component import evaluate as evaluate_component

    @dsl.pipeline(name="registry-wiring")
    def wiring(project: str, model_uri: str, records_uri: str, canary_traffic_percent: int = 10):
        champion = champion_uri(project=project, location="europe-west4", model_display_name="catsdogs")
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        records = dsl.importer(artifact_uri=records_uri, artifact_class=dsl.Dataset)
        scored = evaluate_component(model=model.output, tfrecords=records.output, champion_uri=champion.output,
                                    min_accuracy=MIN_ACCURACY)
        serving = dsl.importer(artifact_uri=model_uri, artifact_class=artifact_types.UnmanagedContainerModel)
        uploaded = ModelUploadOp(project=project, location="europe-west4", display_name="catsdogs",
                                 unmanaged_container_model=serving.output, version_aliases=[DEFAULT_ALIAS])
        import_evaluation(vertex_model=uploaded.outputs["model"], evaluation=scored.outputs["evaluation"])
        endpoint = dsl.importer(artifact_uri="https://x", artifact_class=artifact_types.VertexEndpoint)
        canary_traffic_split(endpoint=endpoint.output, canary_traffic_percent=canary_traffic_percent)

    path = tmp_path / "wiring.yaml"
    compiler.Compiler().compile(wiring, package_path=str(path))
    tasks = yaml.safe_load(path.read_text())["root"]["dag"]["tasks"]
    assert tasks["evaluate"]["inputs"]["parameters"]["champion_uri"]["taskOutputParameter"]["producerTask"] == \
        "champion-uri"
    evaluation = tasks["import-evaluation"]["inputs"]["artifacts"]
    assert evaluation["evaluation"]["taskOutputArtifact"] == {"outputArtifactKey": "evaluation",
                                                              "producerTask": "evaluate"}
    assert evaluation["vertex_model"]["taskOutputArtifact"]["producerTask"] == "model-upload"


def test_a_champion_in_gcs_is_found_and_scored_like_a_local_one(trained_model, records, gcs_bucket):
    """On Vertex the champion is the default version's artifact URI, a gs:// SavedModel folder."""
    base = f"{gcs_bucket}/models/catsdogs"
    publish_version(trained_model, base)
    champion = find_champion(base)
    assert champion.version == "1" and champion.model_dir == f"{base}/1"
    assert find_champion(f"{base}/1").model_dir == f"{base}/1"  # the artifact URI itself
    candidate = evaluate(trained_model, records)
    scored = score_champion(champion, records, candidate.split, candidate.class_names)
    assert scored.confusion_matrix == candidate.confusion_matrix


# -- the champion rule: the newest version that loads and answers finite numbers -----------------------------------


def _base_with_bad_newest_versions(trained_model, diverged_model, base: str) -> str:
    """Version 1 good, 2 answering NaN (an older release could publish one), 3 not loading (a broken file)."""
    publish_version(trained_model, base)
    publish_version(diverged_model, base)
    os.makedirs(os.path.join(base, "3"))
    with open(os.path.join(base, "3", "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    return base


def test_a_champion_answering_nan_is_skipped_not_blamed_on_the_candidate(better_model, diverged_model, records,
                                                                         tmp_path, capsys):
    """(The candidate is one that beats a constant guess, so the gate is decided by the champion's absence.)"""
    base = str(tmp_path / "models")
    publish_version(diverged_model, base)
    gate, out = _run_evaluate(better_model, records, str(tmp_path / "out"), champion_uri=base)
    assert gate is True and "champion_accuracy" not in out["metrics"].metadata  # decided on min_accuracy alone
    log = capsys.readouterr().err  # the component sets up logging to stderr, as in its container
    skipped = [line for line in log.splitlines() if "WARNING" in line and "version 1" in line]
    assert len(skipped) == 1 and "NaN" in skipped[0] and "learning-rate" not in log


@pytest.mark.slow
def test_run_succeeds_when_the_newest_versions_do_not_load_or_answer_nan(trained_model, diverged_model, tmp_path):
    """`catsdogs run` (a fresh process) with a model base whose newest version does not load and whose next
    answers NaN: the champion is version 1, as `catsdogs serve` would serve, and each skipped one is named."""
    import subprocess
    import sys

    workdir = tmp_path / "w"
    base = _base_with_bad_newest_versions(trained_model, diverged_model, str(workdir / "models" / "catsdogs"))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--workdir", str(workdir), "--per-class", "12", "--epochs",
         "1", "--image-size", "32", "--batch-size", "8", "--wandb-mode", "disabled"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=900)
    assert done.returncode == 0, done.stdout
    assert "champion (version 1)" in done.stdout, done.stdout
    log = (workdir / "logs" / "evaluate.log").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line and "skipping version" in line]
    assert len(warnings) == 2, log
    assert "version 3" in warnings[0] and "version 2" in warnings[1] and "NaN" in warnings[1]
    assert os.path.isdir(os.path.join(base, "1"))  # nothing of the user's was deleted
