"""The Vertex AI Model Registry side of champion/challenger: which version is the champion (the model's
`default` version), each uploaded version's evaluation imported into the registry (ModelService.
ImportModelEvaluation, classification metrics schema, confusion matrix included) so the console shows why a
version was or was not promoted, and the endpoint's traffic split for a canary rollout.

The evaluation file the evaluate step writes is in the format GCPC's `ModelImportEvaluationOp` reads
(`{"slicedMetrics": [{"singleOutputSlicingSpec": {}, "metrics": {"classification": {...}}}]}`), so either that
op or `import_evaluation` here can import it; ours also records the champion comparison in the evaluation's
metadata. Every call is built as the request the SDK sends, testable without credentials. The KFP components
are in registry_components.py (a module a component's body imports must not define components).
"""


from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the SDK costs seconds to import; the evaluate step only needs the schema functions
    from google.cloud import aiplatform_v1

log = logging.getLogger(__name__)

# Vertex's schema for classification evaluations (the one GCPC's importer uses for problem_type classification).
CLASSIFICATION_SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
# Vertex's own evaluations report these confidence thresholds (ModelEvaluation classification metrics docs).
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20)) + (0.96, 0.97, 0.98, 0.99)
DEFAULT_ALIAS = "default"  # the version Vertex serves when none is named: the champion
CHALLENGER_ALIAS = "challenger"  # a rejected candidate is uploaded under this alias and never deployed
CANARY_ALIAS = "canary"  # a candidate deployed with part of the traffic, until promoted or rolled back


def _confidence_metrics(evaluation: dict) -> list[dict]:
    """Two classes: recall, precision, false positive rate and F1 of the second class at Vertex's thresholds,
    read off the ROC points (a point's threshold t means "score >= t"; the exact counts follow from the class
    totals in the confusion matrix)."""
    roc = evaluation.get("roc") or {}
    if not roc:
        return []
    matrix = evaluation["confusion_matrix"]
    positives, negatives = sum(matrix[1]), sum(matrix[0])
    points = sorted(zip(roc["thresholds"], roc["tpr"], roc["fpr"]))  # ascending threshold
    entries = []
    for threshold in THRESHOLDS:
        # scores >= threshold are exactly scores >= the smallest distinct score at or above it
        above = next(((tpr, fpr) for t, tpr, fpr in points if t >= threshold), (0.0, 0.0))
        tp, fp = round(above[0] * positives), round(above[1] * negatives)
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = above[0]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        entries.append({"confidenceThreshold": threshold, "recall": recall, "precision": precision,
                        "falsePositiveRate": above[1], "f1Score": f1, "truePositiveCount": tp,
                        "falsePositiveCount": fp, "falseNegativeCount": positives - tp,
                        "trueNegativeCount": negatives - fp})
    return entries


def classification_metrics(evaluation: dict) -> dict:
    """An Evaluation (components/evaluate/core.py, as a dict) in Vertex's classification metrics schema."""
    metrics = {
        "confusionMatrix": {
            "annotationSpecs": [{"id": str(i), "displayName": name}
                                for i, name in enumerate(evaluation["class_names"])],
            "rows": [[float(count) for count in row] for row in evaluation["confusion_matrix"]],
        },
    }
    if math.isfinite(evaluation.get("auc", math.nan)):
        metrics["auRoc"] = evaluation["auc"]
    confidence = _confidence_metrics(evaluation)
    if confidence:
        metrics["confidenceMetrics"] = confidence
    return metrics


def evaluation_file(evaluation: dict, decision: dict) -> dict:
    """What the evaluate step writes: the metrics as GCPC's importer reads them, plus the champion decision
    (accuracy, champion_accuracy, champion_version, published, reason, split, examples) for ours."""
    return {"slicedMetrics": [{"singleOutputSlicingSpec": {},
                               "metrics": {"classification": classification_metrics(evaluation)}}],
            "decision": decision}


def _value(data):
    from google.protobuf import json_format, struct_pb2

    return json_format.ParseDict(data, struct_pb2.Value())


def import_evaluation_request(model_name: str, file: dict, display_name: str = "",
                              pipeline_job: str = "") -> aiplatform_v1.ImportModelEvaluationRequest:
    """ImportModelEvaluation of the evaluation file under the model (version) `model_name`."""
    from google.cloud import aiplatform_v1

    metadata = {k: v for k, v in (file.get("decision") or {}).items() if v is not None}
    if pipeline_job:
        metadata["pipeline_job_resource_name"] = pipeline_job
    evaluation = aiplatform_v1.ModelEvaluation(
        display_name=display_name, metrics_schema_uri=CLASSIFICATION_SCHEMA,
        metrics=_value(file["slicedMetrics"][0]["metrics"]["classification"]), metadata=_value(metadata),
    )
    return aiplatform_v1.ImportModelEvaluationRequest(parent=model_name, model_evaluation=evaluation)


def _model_client(location: str, client=None):
    from google.cloud import aiplatform_v1

    from components.deploy.vertex import _client

    return client or _client(aiplatform_v1.ModelServiceClient, location)


def send_evaluation(request: aiplatform_v1.ImportModelEvaluationRequest, location: str, client=None) -> str:
    """Sends the import; returns the evaluation's resource name."""
    imported = _model_client(location, client).import_model_evaluation(request=request)
    log.info("imported evaluation %s", imported.name)
    return imported.name


def default_version_uri(project: str, location: str, display_name: str, client=None) -> str:
    """The artifact URI (the SavedModel folder) of the `default` version of the newest model with this display
    name: the champion. "" when there is no such model (the first run)."""
    from google.cloud import aiplatform_v1

    from components.deploy.vertex import list_models_request

    client = _model_client(location, client)
    found = next(iter(client.list_models(request=list_models_request(project, location, display_name))), None)
    if found is None:
        return ""
    name = found.name.split("@")[0]
    model = client.get_model(request=aiplatform_v1.GetModelRequest(name=f"{name}@{DEFAULT_ALIAS}"))
    log.info("champion: %s@%s (version %s) at %s", name, DEFAULT_ALIAS, model.version_id, model.artifact_uri)
    return model.artifact_uri


def model_artifact_uri(project: str, location: str, model: str, client=None) -> str:
    """The SavedModel folder that `model` names: a gs:// path as it is; a Vertex model resource name
    (projects/P/locations/L/models/ID, optionally @VERSION or @ALIAS) as that version's artifact URI, its `default`
    version without one; anything else as the display name of a Vertex model, whose `default` version (the
    champion) is used. Resolved when the step runs, so a schedule follows the champion."""
    from google.cloud import aiplatform_v1

    from components.errors import InputError

    if model.startswith("gs://"):
        return model
    if model.startswith("projects/"):
        name = model if "@" in model else f"{model}@{DEFAULT_ALIAS}"
        found = _model_client(location_of(model), client).get_model(request=aiplatform_v1.GetModelRequest(name=name))
        log.info("model %s: version %s at %s", name, found.version_id, found.artifact_uri)
        return found.artifact_uri
    uri = default_version_uri(project, location, model, client)
    if not uri:
        raise InputError(f"no Vertex AI model named {model!r} in projects/{project}/locations/{location}")
    return uri


def canary_split(endpoint_name: str, location: str, percent: int, client=None) -> dict[str, int]:
    """The traffic split for deploying a new model with `percent` of the traffic; the endpoint's models keep
    the rest in their proportions (all of it goes to the new model on an empty endpoint)."""
    from google.cloud import aiplatform_v1

    from components.deploy.vertex import _client, allocate_traffic

    client = client or _client(aiplatform_v1.EndpointServiceClient, location)
    endpoint = client.get_endpoint(request=aiplatform_v1.GetEndpointRequest(name=endpoint_name))
    current = {k: v for k, v in endpoint.traffic_split.items() if v > 0}
    if not current and percent != 100:
        log.info("%s serves no model yet: the new one takes all the traffic, not %d%%", endpoint_name, percent)
        percent = 100
    return allocate_traffic(current, percent)


def location_of(resource_name: str) -> str:
    """projects/P/locations/L/... -> L"""
    parts = resource_name.split("/")
    return parts[parts.index("locations") + 1]
