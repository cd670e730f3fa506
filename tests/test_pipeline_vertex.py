"""The Vertex DAG is checked by compiling it: GCPC ops cannot run outside Vertex."""

import json

import pytest
import yaml

from components.errors import InputError
from components.evaluate.champion import MIN_ACCURACY
from components.images import Images
from pipelines.cli import main
from pipelines.machines import PRESETS, machine_spec
from pipelines.vertex import compile_vertex_pipeline

REGISTRY = "europe-west4-docker.pkg.dev/my-project/catsdogs"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("vertex") / "pipeline.yaml"
    assert main(["compile", "--output", str(path), "--images-registry", REGISTRY, "--images-tag", "abc123",
                 "--machine", "T4_4X"]) == 0
    return yaml.safe_load(path.read_text())


class Dag:
    """The compiled pipeline's tasks by display name (`.set_display_name`), wherever they are nested, so the tests
    read like the DAG and do not depend on kfp's generated ids (condition-branches-2, importer-2)."""

    def __init__(self, compiled: dict):
        self.compiled = compiled
        self.tasks: dict[str, dict] = {}  # display name -> task
        self.ids: dict[str, str] = {}  # display name -> kfp's task id
        self.parent: dict[str, str] = {}  # display name -> display name of the condition it is in ("" at the root)
        self._walk(compiled["root"]["dag"], "")

    def _walk(self, dag: dict, parent: str) -> None:
        names = {task_id: task["taskInfo"]["name"] for task_id, task in dag["tasks"].items()}
        for task_id, task in dag["tasks"].items():
            name = names[task_id]
            assert name not in self.tasks, f"two tasks are displayed as {name!r}"
            self.tasks[name], self.ids[name], self.parent[name] = task, task_id, parent
            task["_depends_on"] = {names[d] for d in task.get("dependentTasks", [])}
            component = self.compiled["components"][task["componentRef"]["name"]]
            if "dag" in component:
                self._walk(component["dag"], name)

    def depends_on(self, name: str) -> set[str]:
        return self.tasks[name]["_depends_on"]

    def condition(self, name: str) -> str:
        return self.tasks[name]["triggerPolicy"]["condition"]

    def parameters(self, name: str) -> dict:
        return self.tasks[name]["inputs"]["parameters"]

    def producer(self, name: str, artifact: str) -> str:
        """The display name of the task whose output feeds this task's input artifact."""
        producer_id = self.tasks[name]["inputs"]["artifacts"][artifact]["taskOutputArtifact"]["producerTask"]
        return next(n for n, i in self.ids.items() if i == producer_id)


@pytest.fixture(scope="module")
def dag(compiled) -> Dag:
    return Dag(compiled)


def inside(dag: Dag, name: str) -> set[str]:
    """Every task nested (at any depth) under the condition displayed as `name`."""
    found = set()
    for task, parent in dag.parent.items():
        while parent:
            if parent == name:
                found.add(task)
                break
            parent = dag.parent[parent]
    return found


def test_dag_runs_prepare_convert_train_evaluate_then_gated_deploy(dag):
    # conversion writes each image's facts; validation reads those (no image twice) and hands on the records
    assert dag.depends_on("convert to TFRecords (Dataflow)") == {"prepare CSV", "W&B settings"}
    assert dag.parameters("convert to TFRecords (Dataflow)")["facts"]["runtimeValue"]["constant"] is True
    assert dag.depends_on("validate data") == {"prepare CSV", "convert to TFRecords (Dataflow)", "W&B settings"}
    for step in ("prepare CSV", "validate data", "train (T4_4X x1)", "evaluate vs champion"):
        assert "W&B settings" in dag.depends_on(step)
    assert dag.depends_on("train (T4_4X x1)") == {"validate data", "W&B settings"}
    assert dag.depends_on("evaluate vs champion") == {"train (T4_4X x1)", "find champion (default version)",
                                                      "W&B settings", "validate data"}
    # the serving check's output is evaluation's blessing and its own (tests/test_serving_check.py)
    assert dag.condition("blessed") == "inputs.parameter_values['pipelinechannel--check-serving-Output'] == true"
    assert dag.condition("rejected") == "!(inputs.parameter_values['pipelinechannel--check-serving-Output'] == true)"
    assert {"upload model version", "upload model", "import evaluation (Model Registry)",
            "find or create endpoint", "traffic split (canary)", "deploy to endpoint",
            "record deployment (W&B)"} <= inside(dag, "blessed")
    assert dag.depends_on("deploy to endpoint") >= {"find or create endpoint", "traffic split (canary)"}


def test_a_rejected_candidate_is_uploaded_as_challenger_and_never_deployed(dag):
    rejected = inside(dag, "rejected")
    assert "upload challenger version (not deployed)" in rejected
    assert "import challenger evaluation (Model Registry)" in rejected
    assert not {"deploy to endpoint", "traffic split (canary)", "find or create endpoint"} & rejected
    aliases = dag.parameters("upload challenger version (not deployed)")["version_aliases"]
    assert aliases["runtimeValue"]["constant"] == ["challenger"]


def test_the_champion_is_the_default_version_looked_up_uncached(dag, compiled):
    champion = "find champion (default version)"
    assert dag.tasks[champion]["cachingOptions"].get("enableCache", False) is False
    evaluate = dag.parameters("evaluate vs champion")
    assert evaluate["champion_uri"]["taskOutputParameter"]["producerTask"] == dag.ids[champion]
    assert evaluate["max_regression"] == {"componentInputParameter": "max_regression"}
    assert "evaluate" in dag.tasks["import evaluation (Model Registry)"]["inputs"]["artifacts"]["evaluation"][
        "componentInputArtifact"]  # the evaluate step's output, handed into the condition
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    new = {"architecture", "weights", "fine_tune_epochs", "max_regression", "canary_traffic_percent"}
    assert new <= set(parameters)
    assert parameters["canary_traffic_percent"]["defaultValue"] == 100


def test_each_run_uploads_a_new_version_of_the_model_and_reuses_the_endpoint(dag):
    assert dag.condition("model-exists") == "inputs.parameter_values['pipelinechannel--find-model-Output'] != ''"
    assert dag.parent["upload model version"] == "model-exists" and dag.parent["upload model"] == "new-model"
    assert dag.producer("upload model version", "parent_model") == "parent model"
    version = dag.parameters("upload model version")  # `canary` or `default`, decided when it runs
    aliases_id = dag.ids["version alias (canary or default)"]  # handed into the condition as a channel
    assert version["version_aliases"]["componentInputParameter"] == f"pipelinechannel--{aliases_id}-Output"
    assert "parent_model" not in dag.tasks["upload model"]["inputs"]["artifacts"]
    assert dag.producer("deploy to endpoint", "endpoint") == "find or create endpoint"
    for lookup in ("find model", "find or create endpoint"):
        assert dag.tasks[lookup]["cachingOptions"].get("enableCache", False) is False


def test_training_is_a_custom_job_on_the_preset_machine_with_the_trainer_image(compiled):
    specs = compiled["components"]["comp-train"]["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert len(specs) == 1
    assert specs[0]["machine_spec"] == {
        "machine_type": "n1-standard-16", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 4
    }
    assert specs[0]["container_spec"]["image_uri"] == f"{REGISTRY}/catsdogs-trainer:abc123"


def test_conversion_runs_on_dataflow_with_the_components_image(dag):
    params = dag.parameters("convert to TFRecords (Dataflow)")
    assert params["runner"]["runtimeValue"]["constant"] == "DataflowRunner"
    image = params["dataflow_sdk_container_image"]["runtimeValue"]["constant"]
    assert image == f"{REGISTRY}/catsdogs-components:abc123"
    assert params["dataflow_project"] == {"componentInputParameter": "project"}


def test_every_step_uses_a_registry_image_and_the_model_is_served_by_ours(compiled):
    executors = compiled["deploymentSpec"]["executors"]
    ours = {e["container"]["image"] for e in executors.values()
            if "container" in e and "catsdogs" in e["container"]["image"]}
    assert ours == {f"{REGISTRY}/catsdogs-components:abc123", f"{REGISTRY}/catsdogs-serving:abc123"}
    spec = executors["exec-importer"]["importer"]["metadata"]["containerSpec"]
    assert spec["imageUri"] == f"{REGISTRY}/catsdogs-serving:abc123"
    assert (spec["healthRoute"], spec["predictRoute"]) == ("/health", "/predict")


def test_gcpc_steps_get_the_pipelines_location(dag):
    for task in ("upload model version", "upload model", "upload challenger version (not deployed)",
                 "find model", "find or create endpoint", "find champion (default version)"):
        assert dag.parameters(task)["location"]["componentInputParameter"].endswith("location")


def test_compilation_is_deterministic(tmp_path):
    images = Images.from_registry(REGISTRY, "t")
    compile_vertex_pipeline(str(tmp_path / "a.yaml"), images, "CPU")
    compile_vertex_pipeline(str(tmp_path / "b.yaml"), images, "CPU")
    assert (tmp_path / "a.yaml").read_bytes() == (tmp_path / "b.yaml").read_bytes()


def test_cpu_preset_has_no_accelerator(tmp_path):
    compile_vertex_pipeline(str(tmp_path / "cpu.yaml"), Images.from_registry(), "CPU")
    compiled = yaml.safe_load((tmp_path / "cpu.yaml").read_text())
    spec = compiled["components"]["comp-train"]["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert "accelerator_type" not in json.dumps(spec[0]["machine_spec"])


def test_presets_cover_tensorflow_clouds_names_that_vertex_still_offers():
    for name in ("CPU", "P100_1X", "P100_4X", "P4_1X", "P4_4X", "V100_1X", "V100_4X",
                 "T4_1X", "T4_4X", "A100_1X", "A100_8X", "L4_1X"):
        assert name in PRESETS
    assert not [name for name, spec in PRESETS.items() if "K80" in name or "K80" in spec.accelerator_type]
    assert machine_spec("t4_1x").accelerator_count == 1
    with pytest.raises(InputError, match="unknown machine preset"):
        machine_spec("TPU_9000")


@pytest.mark.parametrize("preset", ["K80_1X", "k80_8x"])
def test_compile_refuses_the_retired_k80(preset, tmp_path, capsys):
    assert main(["compile", "--output", str(tmp_path / "p.yaml"), "--machine", preset]) == 2
    assert "retired the K80" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_multi_node_training_has_a_chief_pool_and_a_worker_pool(tmp_path):
    compile_vertex_pipeline(str(tmp_path / "p.yaml"), Images.from_registry(REGISTRY, "t"), "V100_4X", replicas=3)
    compiled = yaml.safe_load((tmp_path / "p.yaml").read_text())
    specs = compiled["components"]["comp-train"]["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert [s["replica_count"] for s in specs] == [1, 2]
    assert all(s["machine_spec"]["accelerator_count"] == 4 for s in specs)
    assert "train (V100_4X x3)" in Dag(compiled).tasks


def test_pipeline_parameters_cover_data_dataflow_training_and_deploy(compiled, dag):
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    for name in ("project", "location", "images_root", "record_format", "dataflow_machine_type",
                 "dataflow_max_workers", "dataflow_subnetwork", "service_account", "min_accuracy",
                 "endpoint_display_name", "deploy_machine_type", "deploy_min_replicas", "deploy_max_replicas"):
        assert name in parameters, name
    assert parameters["min_accuracy"]["defaultValue"] == MIN_ACCURACY  # the one default (champion.py)
    convert = dag.parameters("convert to TFRecords (Dataflow)")
    assert convert["dataflow_service_account"] == {"componentInputParameter": "service_account"}
    assert convert["dataflow_max_workers"] == {"componentInputParameter": "dataflow_max_workers"}


def test_submit_dry_run_prints_the_job_request_without_credentials(capsys, monkeypatch):
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    code = main(["submit", "--project", "my-project", "--region", "europe-west4", "--pipeline-root", "gs://b/root",
                 "--images", "gs://b/images", "--param", "epochs=3", "--param", "augment=true",
                 "--param", "min_accuracy=0.9", "--label", "team=ml", "--no-cache", "--dry-run",
                 "--images-registry", REGISTRY, "--images-tag", "abc"])
    assert code == 0
    request = json.loads(capsys.readouterr().out)
    assert request["templateName"] == "catsdogs"
    assert request["runtimeConfig"]["gcsOutputDirectory"] == "gs://b/root"
    values = request["runtimeConfig"]["parameterValues"]
    assert values["project"] == "my-project" and values["location"] == "europe-west4"
    assert values["images_root"] == "gs://b/images" and values["dataflow_temp_location"] == "gs://b/root/dataflow-tmp"
    assert values["epochs"] == 3 and values["augment"] is True and values["min_accuracy"] == 0.9
    assert request["labels"] == {"app": "catsdogs", "team": "ml"}


@pytest.mark.parametrize(
    "extra, message",
    [(["--param", "epoch=3"], "no such parameter"), (["--param", "epochs=three"], "not a valid number_integer"),
     (["--param", "augment=maybe"], "true or false"), (["--param", "epochs"], "KEY=VALUE"),
     (["--param", "canary_traffic_percent=0"], "must be 1..100")],
)
def test_submit_refuses_bad_parameters_by_name(extra, message, capsys):
    code = main(["submit", "--project", "my-project", "--region", "r", "--pipeline-root", "gs://b/root",
                 "--images", "gs://b/images", "--dry-run", *extra])
    assert code == 2 and message in capsys.readouterr().err


def test_the_suite_runs_as_on_google_cloud_with_the_fake_metadata_servers_credentials(metadata_server):
    # tests/conftest.py: what Application Default Credentials find on a Cloud Build worker, played locally.
    import google.auth
    import google.auth.transport.requests

    credentials, project = google.auth.default()
    assert project == metadata_server.project
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.token == "fake-metadata-token" and metadata_server.token_requests()


def test_submit_dry_run_asks_google_cloud_for_nothing(metadata_server, capsys):
    # On a Google Cloud machine credentials are there for the taking: a dry run must not take them.
    assert main(["submit", "--project", "my-project", "--region", "europe-west4", "--pipeline-root", "gs://b/root",
                 "--images", "gs://b/images", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["runtimeConfig"]["parameterValues"]["project"] == "my-project"
    assert metadata_server.token_requests() == []


def test_submit_without_credentials_says_how_to_get_them(off_google_cloud, capsys):
    # No key file and no gcloud login (tests/conftest.py), and here no metadata server: a laptop's first run.
    code = main(["submit", "--project", "my-project", "--region", "europe-west4", "--pipeline-root", "gs://b/root",
                 "--images", "gs://b/images"])
    assert code == 2
    assert "gcloud auth application-default login" in capsys.readouterr().err
    assert off_google_cloud.requests, "google-auth never asked the metadata server: the test proves nothing"


def test_submit_checks_paths_and_project_before_anything_else(capsys):
    assert main(["submit", "--project", "My Project", "--region", "r", "--pipeline-root", "gs://b/r",
                 "--images", "gs://b/i", "--dry-run"]) == 2
    assert "not a Google Cloud project ID" in capsys.readouterr().err
    assert main(["submit", "--project", "my-project", "--region", "r", "--pipeline-root", "/tmp/root",
                 "--images", "gs://b/i", "--dry-run"]) == 2
    assert "--pipeline-root must be a gs:// path" in capsys.readouterr().err


def test_submit_hands_its_service_account_to_the_steps(capsys):
    # The job's identity does not reach Dataflow workers or the training job: the pipeline parameter does.
    account = "catsdogs-pipelines@my-project.iam.gserviceaccount.com"
    args = ["submit", "--project", "my-project", "--region", "europe-west4", "--pipeline-root", "gs://b/root",
            "--images", "gs://b/images", "--service-account", account, "--dry-run"]
    assert main(args) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["serviceAccount"] == account
    assert request["runtimeConfig"]["parameterValues"]["service_account"] == account
    assert main([*args, "--param", "service_account=other@my-project.iam.gserviceaccount.com"]) == 2
    assert "give one" in capsys.readouterr().err


CACHED = ("prepare CSV", "convert to TFRecords (Dataflow)", "train (T4_1X x1)")


def _cache_key(spec: dict, values: dict, job_name: str, task_id: str) -> tuple:
    """What Vertex's cache key holds of a root task, resolved for one run: its component (the executor's image,
    command and args) and its inputs, with run-time placeholders ({{$.pipeline_job_name}} ...) filled in for this
    run and each upstream output replaced by the cache key of the task that makes it (a cached producer gives
    the same output)."""
    task = spec["root"]["dag"]["tasks"][task_id]
    component = spec["components"][task["componentRef"]["name"]]
    executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
    placeholders = {"{{$.pipeline_job_name}}": job_name, "{{$.pipeline_job_uuid}}": f"uuid-{job_name}",
                    "{{$.pipeline_job_resource_name}}": f"projects/p/locations/l/pipelineJobs/{job_name}"}

    def fill(value):
        text = json.dumps(value)
        for placeholder, run_value in placeholders.items():
            text = text.replace(placeholder, run_value)
        return json.loads(text)

    def resolve(source: dict):
        if "componentInputParameter" in source:
            return values[source["componentInputParameter"]]
        if "runtimeValue" in source:
            return fill(source["runtimeValue"]["constant"])
        producer = source.get("taskOutputParameter") or source.get("taskOutputArtifact")
        key = producer.get("outputParameterKey") or producer.get("outputArtifactKey")
        return ("output", key, _cache_key(spec, values, job_name, producer["producerTask"]))

    inputs = task.get("inputs", {})
    resolved = {name: resolve(source) for kind in ("parameters", "artifacts")
                for name, source in sorted(inputs.get(kind, {}).items())}
    defaults = {name: d.get("defaultValue") for name, d in component.get("inputDefinitions", {}).get(
        "parameters", {}).items() if name not in resolved}
    return json.dumps([fill(executor), resolved, fill(defaults)], sort_keys=True, default=str),


def _jobs(tmp_path, *extra: str) -> list[dict]:
    """The job requests of two submissions of one compiled template, as `catsdogs submit` builds them."""
    from pipelines.submit import build_job

    template = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(template), "--images-registry", REGISTRY, "--images-tag", "abc"]) == 0
    jobs = []
    for _ in range(2):
        job = build_job(str(template), "my-project", "europe-west4", "gs://b/root", "gs://b/images", [],
                        enable_caching="--no-cache" not in extra)
        jobs.append(job.to_dict())
    return jobs


def test_a_resubmitted_run_reuses_prepare_convert_and_train_from_the_cache(tmp_path):
    """Vertex's cache key is the component plus its resolved inputs: a step whose inputs derive from the run's name
    or id (as the W&B settings once did) misses the cache on every run, and so does everything after it."""
    jobs = _jobs(tmp_path)
    spec, values = jobs[0]["pipelineSpec"], jobs[0]["runtimeConfig"]["parameterValues"]
    defaults = {name: d.get("defaultValue") for name, d in spec["root"]["inputDefinitions"]["parameters"].items()}
    dag = Dag(spec)
    for step in CACHED:
        first, second = (_cache_key(spec, {**defaults, **values}, run, dag.ids[step]) for run in ("run-1", "run-2"))
        assert first == second, f"{step}'s inputs differ between two runs: it never hits the cache"
        for job in jobs:  # the compiled options stand: caching on for these, off for the lookups
            assert Dag(job["pipelineSpec"]).tasks[step].get("cachingOptions", {}).get("enableCache", True) is True
    for job in jobs:  # a submitted job keeps the lookups uncached (a cached champion would be a stale one)
        submitted = Dag(job["pipelineSpec"])
        for lookup in ("find champion (default version)", "find model", "find or create endpoint"):
            assert submitted.tasks[lookup]["cachingOptions"].get("enableCache", False) is False, lookup


def test_no_cache_runs_every_step(tmp_path):
    for job in _jobs(tmp_path, "--no-cache"):
        dag = Dag(job["pipelineSpec"])
        assert {name: task["cachingOptions"]["enableCache"] for name, task in dag.tasks.items()} == dict.fromkeys(
            dag.tasks, False)


def test_no_compiled_pipeline_is_committed():
    """A compiled pipeline names the images of one build: `catsdogs compile` writes it for the images it is given
    (Cloud Build's compile step). A committed one goes stale (local image names, old parameters)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    tracked = subprocess.run(["git", "ls-files", "*.yaml", "*.yml", "*.json"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
    compiled = [path for path in tracked if "deploymentSpec" in (root / path).read_text(errors="replace")
                and "pipelineInfo" in (root / path).read_text(errors="replace")]
    assert compiled == []
    assert subprocess.run(["git", "check-ignore", "-q", "pipeline.yaml"], cwd=root).returncode == 0


def test_the_steps_that_launch_dataflow_report_it_as_gcp_resources(tmp_path):
    """Vertex links and cancels the jobs a step lists in its `gcp_resources` output (GCPC's launchers' contract)."""
    from pipelines.batch import compile_batch_pipeline

    compile_batch_pipeline(str(tmp_path / "batch.yaml"), Images.from_registry(REGISTRY, "t"))
    compile_vertex_pipeline(str(tmp_path / "training.yaml"), Images.from_registry(REGISTRY, "t"))
    for name, component in (("batch.yaml", "comp-batch-predict"), ("training.yaml", "comp-convert")):
        outputs = yaml.safe_load((tmp_path / name).read_text())["components"][component]["outputDefinitions"]
        assert outputs["parameters"]["gcp_resources"] == {"parameterType": "STRING"}, name
