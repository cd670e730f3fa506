"""The container images, built and run the way Vertex AI, KFP and Dataflow use them.

Tests marked `images` build the three images with images/build.sh (podman or docker, see images/engine.sh) and run
containers; `make test` installs podman where it is missing. The lint and version checks need no engine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENGINE = str(ROOT / "images" / "engine.sh")
BIN = Path(sys.executable).parent
DOCKERFILES = sorted(ROOT.glob("images/**/Dockerfile")) + sorted(ROOT.glob("images/standin/*.Dockerfile"))
NAMES = ("components", "trainer", "serving")
# Routes and port as Vertex sets them for a deployed model, unlike the image's defaults.
HEALTH_ROUTE = "/v1/endpoints/1/deployedModels/2"
PREDICT_ROUTE = "/v1/endpoints/1/deployedModels/2:predict"
PORT = 8081


def engine(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args[:3])} ... failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def locked_version(package: str) -> str:
    match = re.search(rf"^{package}==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert match, f"{package} is not in requirements.lock"
    return match.group(1)


def arg_default(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.M)
    assert match, f"{dockerfile} has no ARG {name}=..."
    return match.group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_is_clean(dockerfile):
    # Any warning we accept carries an inline `# hadolint ignore=...` with its reason written above it.
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], \
                f"{dockerfile}:{i + 1}: an ignored hadolint rule needs its reason on the line above"


def test_base_images_are_pinned_alike():
    pins = {arg_default(ROOT / "images" / name / "Dockerfile", "PYTHON_IMAGE") for name in NAMES}
    assert len(pins) == 1, f"the images disagree on their Python base: {pins}"
    assert re.fullmatch(r"docker\.io/library/python:3\.11\.\d+-slim-bookworm", pins.pop())


def test_beam_boot_image_matches_the_locked_beam_sdk():
    # Dataflow refuses SDK containers whose Beam SDK differs from the job's; ours installs the locked version.
    beam_image = arg_default(ROOT / "images" / "components" / "Dockerfile", "BEAM_IMAGE")
    assert beam_image == f"docker.io/apache/beam_python3.11_sdk:{locked_version('apache-beam')}"


@pytest.mark.images
@pytest.mark.parametrize("name", NAMES)
def test_image_runs_as_the_user_its_platform_runs_it_as(image, name):
    # The components image is Dataflow's SDK container and Vertex's step image: root, as both run it (Dataflow's
    # boot writes to a root-owned --semi_persist_dir; images/components/Dockerfile says why). The others: uid 1000.
    user, uid = ("", "0") if name == "components" else ("1000:1000", "1000")
    assert engine("image", "inspect", "--format", "{{.Config.User}}", image(name)).stdout.strip() == user
    assert engine("run", "--rm", "--entrypoint", "id", image(name), "-u").stdout.strip() == uid


@pytest.mark.images
def test_trainer_image_has_cuda_tensorflow_and_falls_back_to_cpu(image):
    script = (
        "import json, tensorflow as tf\n"
        "x = tf.random.uniform((64, 64))\n"
        "print(json.dumps({'version': tf.__version__, 'cuda_build': tf.test.is_built_with_cuda(),\n"
        "                  'gpus': len(tf.config.list_physical_devices('GPU')),\n"
        "                  'device': tf.matmul(x, x).device,\n"
        "                  'cudnn': tf.sysconfig.get_build_info()['cudnn_version']}))\n"
    )
    result = engine("run", "--rm", "--entrypoint", "python", image("trainer"), "-c", script)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["version"] == locked_version("tensorflow")
    assert info["cuda_build"] and info["cudnn"]
    assert info["gpus"] == 0
    assert info["device"].endswith("CPU:0")
    engine("run", "--rm", "--entrypoint", "python", image("trainer"), "-c", "import nvidia.cudnn, kfp")


@pytest.mark.images
def test_components_image_is_a_beam_sdk_container(image):
    components = image("components")
    assert json.loads(engine("image", "inspect", "--format", "{{json .Config.Entrypoint}}", components).stdout) == \
        ["/opt/apache/beam/boot"]
    result = engine("run", "--rm", "--entrypoint", "python", components, "-c", "import apache_beam, os; "
                    "print(apache_beam.__version__, os.access('/opt/apache/beam/boot', os.X_OK))")
    assert result.stdout.split() == [locked_version("apache-beam"), "True"]


@pytest.mark.images
def test_component_runs_in_its_image_as_kfp_runs_it(image, sample_images, tmp_path):
    """The `prepare` step of the compiled Vertex pipeline: its image, command and args from the YAML, with an
    executor input as the KFP launcher writes it and the pipeline root mounted at the same path."""
    pipeline = tmp_path / "pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.cli", "compile", "--output", str(pipeline)], check=True,
                   capture_output=True)
    spec = yaml.safe_load(pipeline.read_text())["deploymentSpec"]["executors"]["exec-prepare"]["container"]
    assert spec["image"] == image("components")

    root = tmp_path / "pipeline_root"
    root.mkdir()
    root.chmod(0o755)  # root's, as a mounted bucket is; the step runs as root
    csv_uri = str(root / "prepare" / "image_csv")
    executor_input = {
        "inputs": {"parameterValues": {"images_root": sample_images, "train_fraction": 0.8,
                                       "validation_fraction": 0.1}},
        "outputs": {
            "artifacts": {"image_csv": {"artifacts": [{
                "name": "image_csv", "uri": csv_uri, "metadata": {},
                "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}]}},
            "outputFile": str(root / "prepare" / "executor_output.json"),
        },
    }
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in spec["args"]]
    assert not [arg for arg in args if "{{" in arg], "prepare's args hold a placeholder this test does not fill"
    Path(sample_images).chmod(0o755)
    result = engine("run", "--rm", "-v", f"{sample_images}:{sample_images}:ro", "-v", f"{root}:{root}",
                    "--entrypoint", spec["command"][0], spec["image"], *spec["command"][1:], *args)

    rows = Path(csv_uri).read_text().splitlines()
    assert rows[0] == "split,image_uri,label"
    assert len(rows) == 1 + 40, result.stderr
    assert {row.rsplit(",", 1)[1] for row in rows[1:]} == {"cats", "dogs"}
    output = json.loads((root / "prepare" / "executor_output.json").read_text())
    assert output["artifacts"]["image_csv"]["artifacts"][0]["metadata"], "the step's CSV counts are missing"


def _request(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _predict_here(model_dir: str, image: bytes) -> tuple[str, dict]:
    """The SavedModel's own answer (its serving_default signature), to compare the container's with."""
    import tensorflow as tf

    outputs = tf.saved_model.load(model_dir).signatures["serving_default"](image_bytes=tf.constant([image]))
    classes = [c.decode() for c in outputs["classes"].numpy()[0]]
    probabilities = outputs["probabilities"].numpy()[0].tolist()
    return outputs["labels"].numpy()[0].decode(), dict(zip(classes, probabilities, strict=True))


def _logs(container: str) -> str:
    result = engine("logs", container, check=False)
    return result.stdout + result.stderr


def _wait_until_healthy(container: str, url: str) -> None:
    deadline = time.monotonic() + 180  # a guard against hanging, not a speed requirement
    while time.monotonic() < deadline:
        try:
            if _request(url)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        if engine("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
            pytest.fail(f"the serving container exited:\n{_logs(container)}")
        time.sleep(0.5)
    pytest.fail(f"the serving container never answered {url}:\n{_logs(container)}")


@pytest.mark.images
def test_serving_container_follows_the_vertex_contract(image, trained_model, sample_images):
    container = f"catsdogs-serving-test-{os.getpid()}"
    engine("rm", "--force", container, check=False)
    engine("run", "--detach", "--name", container, "--publish", f"127.0.0.1::{PORT}",
           "--volume", f"{trained_model}:/mnt/models/catsdogs:ro",
           "--env", f"AIP_HTTP_PORT={PORT}", "--env", f"AIP_HEALTH_ROUTE={HEALTH_ROUTE}",
           "--env", f"AIP_PREDICT_ROUTE={PREDICT_ROUTE}", "--env", "AIP_STORAGE_URI=/mnt/models/catsdogs",
           image("serving"))
    try:
        published = engine("port", container, str(PORT)).stdout.strip().splitlines()
        assert published and all(line.startswith("127.0.0.1:") for line in published), published
        base = f"http://{published[0]}"
        _wait_until_healthy(container, base + HEALTH_ROUTE)

        image = next(Path(sample_images, "cats").iterdir())
        body = json.dumps({"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}).encode()
        status, reply = _request(base + PREDICT_ROUTE, body)
        assert status == 200, reply
        [prediction] = reply["predictions"]
        label, probabilities = _predict_here(trained_model, image.read_bytes())
        assert prediction["label"] == label
        assert prediction["probabilities"] == pytest.approx(probabilities, abs=1e-4)

        not_an_image = base64.b64encode(b"not an image").decode()
        for bad in ('{"instances": [{"b64": "not base64!"}]}', f'{{"instances": [{{"b64": "{not_an_image}"}}]}}'):
            status, reply = _request(base + PREDICT_ROUTE, bad.encode())
            assert status == 400 and reply["error"], (bad, reply)
        assert _request(base + HEALTH_ROUTE)[0] == 200, "a bad request must not take the server down"

        # PID 1 must end on SIGTERM: if it ignored it, the engine would SIGKILL it after the grace time (137).
        engine("stop", "--time", "60", container)
        assert engine("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() == "0"
    finally:
        engine("rm", "--force", container, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.images
def test_beam_worker_environment_runs_the_sdk_in_the_images_own_python(image):
    # Beam's boot program (>= 2.44) makes a venv per worker unless this is set; that venv sees the base
    # interpreter's packages, not /opt/venv's.
    env = json.loads(engine("image", "inspect", "--format", "{{json .Config.Env}}", image("components")).stdout)
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env
    assert any(e.startswith("PATH=/opt/venv/bin:") for e in env)


CONVERT_WITH_EXTERNAL_WORKERS = """
import json, sys
from components.convert.pipeline import convert
csv, out, pool = sys.argv[1:]
# --save_main_session: Beam 2.77 turns it on for Dataflow (cloudpickle), so pickled_main_session is always staged.
summary = convert(csv, out, runner="PortableRunner", pipeline_args=[
    "--job_endpoint=embed", "--environment_type=EXTERNAL", f"--environment_config={pool}", "--save_main_session"])
print(json.dumps({"good": summary.good, "bad": summary.bad, "per_split": summary.per_split}))
"""

# How Dataflow starts the SDK container on a worker VM: the image's boot program, with a root-owned host folder as
# --semi_persist_dir, into which boot writes every staged file (Beam's boot.go, artifact.Materialize).
DATAFLOW_START = """#!/bin/sh
exec /opt/apache/beam/boot --semi_persist_dir=/var/opt/google "$@"
"""


@pytest.mark.images
def test_beam_worker_in_the_components_image_converts_as_dataflow_starts_it(image, sample_images, tmp_path):
    """The conversion with every DoFn in the components image, each worker started as Dataflow starts one: Beam's
    portable runner here hands the work to a worker pool in the container (EXTERNAL environment), which starts each
    worker with the image's boot program and Dataflow's flags (DATAFLOW_START), as the image's user; boot fetches
    the staged pickled_main_session into the root-owned /var/opt/google and the worker processes the bundles.
    With images/build.sh's stand-in for Beam's boot (no registry reachable) boot is images/standin/boot."""
    from components.prepare import prepare_csv

    components = image("components")
    bucket = tmp_path / "bucket"  # the workers read the CSV and write (and stage) the shards here, as in a bucket
    persist, start = tmp_path / "var-opt-google", tmp_path / "dataflow"
    for folder in (bucket, persist, start):
        folder.mkdir()
        os.chown(folder, 0, 0)
        folder.chmod(0o755)  # root's, as Dataflow's host folder is
    (start / "boot").write_text(DATAFLOW_START)
    (start / "boot").chmod(0o755)
    csv, out = bucket / "images.csv", bucket / "records"
    prepare_csv(sample_images, str(csv), train_fraction=0.6, validation_fraction=0.2)
    Path(sample_images).chmod(0o755)
    port = _free_port()
    container = f"catsdogs-beam-worker-{os.getpid()}"
    engine("rm", "--force", container, check=False)
    engine("run", "--detach", "--name", container, "--network", "host",
           "--volume", f"{sample_images}:{sample_images}:ro", "--volume", f"{bucket}:{bucket}",
           "--volume", f"{persist}:/var/opt/google", "--volume", f"{start}:/dataflow:ro",
           "--entrypoint", "python", components, "-m", "apache_beam.runners.worker.worker_pool_main",
           f"--service_port={port}", "--container_executable=/dataflow/boot")
    try:
        deadline = time.monotonic() + 120  # a guard against hanging, not a speed requirement
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or engine("inspect", "--format", "{{.State.Running}}",
                                                     container).stdout.strip() != "true":
                pytest.fail(f"the worker pool never listened on {port}:\n{_logs(container)}")
            time.sleep(0.5)
        try:
            result = subprocess.run([sys.executable, "-c", CONVERT_WITH_EXTERNAL_WORKERS, str(csv), str(out),
                                     f"localhost:{port}"], capture_output=True, text=True, timeout=400,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)})
        except subprocess.TimeoutExpired:
            pytest.fail(f"the conversion hung; the worker pool said:\n{_logs(container)[-4000:]}")
        assert result.returncode == 0, f"{result.stderr[-4000:]}\nworker pool:\n{_logs(container)[-4000:]}"
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["good"] == 40 and summary["bad"] == 0, summary
        assert "/dataflow/boot" in _logs(container), "no worker was started with Dataflow's flags"
    finally:
        engine("rm", "--force", container, check=False)
    session = persist / "staged" / "pickled_main_session"
    assert session.is_file() and session.stat().st_size > 0, sorted(p.name for p in persist.rglob("*"))
    shards = sorted(out.glob("*.tfrecord*"))
    assert shards, sorted(p.name for p in out.iterdir())
    assert {p.stat().st_uid for p in shards} == {0}  # written by the workers in the container, as root
    import tensorflow as tf

    records = [r.numpy() for p in shards for r in tf.data.TFRecordDataset(str(p))]
    assert len(records) == summary["good"]
    features = tf.train.Example.FromString(records[0]).features.feature
    height, width = features["image_height"].int64_list.value[0], features["image_width"].int64_list.value[0]
    pixels = tf.io.decode_jpeg(features["image_jpeg"].bytes_list.value[0])  # as the container's Pillow wrote it
    assert pixels.shape == (height, width, 3)


@pytest.mark.images
def test_component_writes_its_outputs_under_the_gcs_mount_as_on_vertex(image, sample_images, tmp_path, gcs_bucket,
                                                                       gcs_emulator, metadata_server):
    """A step as Vertex runs it: as root, gs:// artifact URIs with their bucket mounted at /gcs/BUCKET (Cloud
    Storage FUSE; KFP's executor makes the output's folders there), a metadata server, and objects written
    through the GCS API (the emulator here, which needs no token)."""
    from components import storage

    pipeline = tmp_path / "pipeline.yaml"
    subprocess.run([sys.executable, "-m", "pipelines.cli", "compile", "--output", str(pipeline)], check=True,
                   capture_output=True)
    spec = yaml.safe_load(pipeline.read_text())["deploymentSpec"]["executors"]["exec-prepare"]["container"]
    bucket = gcs_bucket.removeprefix("gs://")
    mount, outputs = tmp_path / "gcs" / bucket, tmp_path / "kfp_outputs"
    for folder in (mount, outputs):
        folder.mkdir(parents=True)
        os.chown(folder, 0, 0)
    csv_uri = f"{gcs_bucket}/pipeline-root/run-1/prepare/image_csv"
    executor_input = {
        "inputs": {"parameterValues": {"images_root": "/data/images", "train_fraction": 0.8,
                                       "validation_fraction": 0.1}},
        "outputs": {
            "artifacts": {"image_csv": {"artifacts": [{
                "name": "image_csv", "uri": csv_uri, "metadata": {},
                "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}]}},
            "outputFile": "/tmp/kfp_outputs/output_metadata.json",
        },
    }
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in spec["args"]]
    Path(sample_images).chmod(0o755)
    engine("run", "--rm", "--network", "host", "-v", f"{sample_images}:/data/images:ro",
           "-v", f"{mount}:/gcs/{bucket}", "-v", f"{outputs}:/tmp/kfp_outputs",
           "--env", f"STORAGE_EMULATOR_HOST={gcs_emulator.url}",
           "--env", f"GCE_METADATA_HOST={metadata_server.host}", "--env", f"GCE_METADATA_IP={metadata_server.host}",
           "--entrypoint", spec["command"][0], image("components"), *spec["command"][1:], *args)

    rows = storage.read_text(csv_uri).splitlines()
    assert rows[0] == "split,image_uri,label" and len(rows) == 1 + 40
    assert all(row.split(",")[1].startswith("/data/images/") for row in rows[1:])
    made = mount / "pipeline-root" / "run-1" / "prepare"
    assert made.is_dir() and made.stat().st_uid == 0, "KFP's executor made no folder under the /gcs mount"
    output = json.loads((outputs / "output_metadata.json").read_text())
    assert output["artifacts"]["image_csv"]["artifacts"][0]["metadata"], "the step's CSV counts are missing"
