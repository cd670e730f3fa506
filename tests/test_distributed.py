"""Strategy selection and real distributed training on this machine's CPU: two worker processes on 127.0.0.1
through the `catsdogs train` command (TF_CONFIG as the README shows it, Vertex's CLUSTER_SPEC, fine-tuning, a
killed worker) and through the train step's container command in the trainer image; MirroredStrategy over
two logical CPU devices; resuming a killed single-machine run."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.train import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATSDOGS = os.path.join(os.path.dirname(sys.executable), "catsdogs")  # the installed command users run
ENGINE = os.path.join(ROOT, "images", "engine.sh")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_vertex_cluster_spec_becomes_tf_config(monkeypatch):
    spec = {"cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w1:2222", "w2:2222"]},
            "environment": "cloud", "task": {"type": "workerpool1", "index": 1}}
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps(spec))
    config = distribute.cluster_config()
    assert config == {"cluster": {"chief": ["chief:2222"], "worker": ["w1:2222", "w2:2222"]},
                      "task": {"type": "worker", "index": 1}}
    assert distribute.worker_count(config) == 3 and not distribute.is_chief(config)


@pytest.mark.parametrize("variable", ["CLUSTER_SPEC", "TF_CONFIG"])
def test_a_master_task_is_the_chief(variable, monkeypatch):
    # AI Platform's name for the chief: without translation TensorFlow refuses it and the worker would count the
    # cluster as one task and train alone.
    spec = {"cluster": {"master": ["m:2222"], "worker": ["w1:2222"]}, "task": {"type": "master", "index": 0}}
    for name in ("CLUSTER_SPEC", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, json.dumps(spec))
    config = distribute.cluster_config()
    assert config == {"cluster": {"chief": ["m:2222"], "worker": ["w1:2222"]}, "task": {"type": "chief", "index": 0}}
    assert distribute.worker_count(config) == 2 and distribute.is_chief(config)
    monkeypatch.setenv(variable, json.dumps({**spec, "task": {"type": "worker", "index": 0}}))
    assert not distribute.is_chief(distribute.cluster_config())


def test_one_task_is_no_cluster_and_worker_zero_is_chief_without_a_chief(monkeypatch):
    monkeypatch.delenv("CLUSTER_SPEC", raising=False)
    one = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(one))
    assert distribute.cluster_config() is None and distribute.is_chief(None)
    two = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert distribute.is_chief(two) and not distribute.is_chief({**two, "task": {"type": "worker", "index": 1}})


def test_no_gpu_and_no_cluster_trains_with_the_default_strategy():
    import tensorflow as tf

    assert distribute.choose_strategy(None) is tf.distribute.get_strategy()


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory) -> str:
    """TFRecords in 3 shards: with two workers, worker 0 reads shards 0 and 2 and worker 1 shard 1, about twice
    as many records, as on Vertex whenever the shards do not divide evenly among the workers."""
    from components.convert.pipeline import convert
    from components.prepare import prepare_csv
    from components.sample_data import generate_sample

    root = tmp_path_factory.mktemp("three_shards")
    generate_sample(str(root / "images"), per_class=40)
    prepare_csv(str(root / "images"), str(root / "images.csv"), train_fraction=0.7, validation_fraction=0.15)
    convert(str(root / "images.csv"), str(root / "tfrecords"), num_shards=3)
    return str(root / "tfrecords")


def _worker_env(tmp_path, index: int, **variables: str) -> dict[str, str]:
    """The environment of one worker process: its own TMPDIR (to see what it leaves there), no GPU, no cluster
    variables but the ones given."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    tmp = tmp_path / f"tmp{index}"
    tmp.mkdir(exist_ok=True)
    return {**env, "TMPDIR": str(tmp), "CUDA_VISIBLE_DEVICES": "", **variables}


def _tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG as the README shows it: two workers, worker 0 the chief."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def _cluster_spec(ports: list[int], index: int) -> str:
    """CLUSTER_SPEC as a Vertex custom job with two worker pools sets it: workerpool0 the chief, workerpool1 the
    workers."""
    task = {"type": "workerpool0", "index": 0} if index == 0 else {"type": "workerpool1", "index": index - 1}
    return json.dumps({"cluster": {"workerpool0": [f"127.0.0.1:{ports[0]}"],
                                   "workerpool1": [f"127.0.0.1:{port}" for port in ports[1:]]},
                       "environment": "cloud", "task": task, "job": {"worker_pool_specs": []}})


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _kill(workers: list[subprocess.Popen]) -> None:
    for w in workers:  # a worker whose peer died hangs in a collective, deaf to SIGTERM
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
        w.wait()


def _run(workers: list[subprocess.Popen], timeout: int = 400) -> list[tuple[str, str]]:
    try:
        outputs = [w.communicate(timeout=timeout) for w in workers]
    finally:
        _kill(workers)
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, f"{w.args}:\n{out[-2000:]}\n{err[-4000:]}"
    return outputs


def _digest(stderr: str) -> str:
    found = re.findall(r"weights sha256 ([0-9a-f]{64})", stderr)
    assert found, stderr[-3000:]
    return found[-1]


def _check_two_workers(outputs, model_dir, tmp_path, epochs: int) -> dict:
    """Both workers trained to the same weights; the chief alone wrote model_dir; the other left nothing."""
    (_, chief_err), (_, worker_err) = outputs
    info = json.loads((model_dir / "training.json").read_text())
    assert info["workers"] == 2 and info["replicas"] == 2
    assert len(info["history"]["loss"]) == epochs
    assert _digest(chief_err) == _digest(worker_err) == info["weights_sha256"]
    assert (model_dir / "saved_model.pb").is_file()
    assert "exported SavedModel" in chief_err and "exported SavedModel" not in worker_err
    assert not list((tmp_path / "tmp1").glob("catsdogs-*")), "the worker left its temporary export behind"
    # backups removed; assets.extra holds the warm-up records (components/warmup.py)
    assert sorted(p.name for p in model_dir.iterdir()) == ["assets", "assets.extra", "fingerprint.pb",
                                                           "saved_model.pb", "training.json", "variables"]
    return info


def _readme_workers() -> list[tuple[dict, list[str]]]:
    """The README's multi-node commands (its *Multi-node:* paragraph): (environment, argv) of each worker."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    block = readme.split("*Multi-node:*", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [c.strip().removesuffix("&") for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    workers = []
    for command in commands:
        words = shlex.split(command)
        variables = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
        workers.append((variables, [w for w in words if w not in {f"{k}={v}" for k, v in variables.items()}]))
    return workers


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["TF_CONFIG", "CLUSTER_SPEC"])
def test_two_workers_train_through_the_command(variable, three_shards, tmp_path):
    """The README's two commands (TF_CONFIG, on free ports, in a folder holding its `tfr`), and a Vertex custom
    job's way (CLUSTER_SPEC): the workers read unequal shares of the records and must still take the same
    steps."""
    readme = _readme_workers()
    assert [env["TF_CONFIG"] for env, _ in readme] == [
        _tf_config([23456, 23457], i).replace("127.0.0.1", "localhost").replace(" ", "") for i in range(2)]
    ports = _free_ports(2)
    os.symlink(three_shards, tmp_path / "tfr")
    workers = []
    for i, (env, argv) in enumerate(readme):
        assert argv[:2] == ["catsdogs", "train"]
        if variable == "TF_CONFIG":
            cluster = env["TF_CONFIG"].replace("23456", str(ports[0])).replace("23457", str(ports[1]))
        else:
            cluster = _cluster_spec(ports, i)
        workers.append(subprocess.Popen([CATSDOGS, *argv[1:]], cwd=tmp_path, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                                        env=_worker_env(tmp_path, i, **{variable: cluster})))
    outputs = _run(workers)
    _check_two_workers(outputs, tmp_path / "m", tmp_path, epochs=2)
    assert "TEST accuracy" in outputs[0][0] and "the chief writes the model" in outputs[1][0]


@pytest.mark.slow
def test_two_workers_fine_tune_mobilenet(three_shards, tmp_path):
    """The second phase recompiles the model under the strategy, on every worker alike."""
    ports = _free_ports(2)
    workers = [_start([CATSDOGS, "train", "--data", three_shards, "--model-dir", str(tmp_path / "m"),
                       "--architecture", "mobilenet_v3_small", "--fine-tune-epochs", "1", "--epochs", "1",
                       "--image-size", "32", "--batch-size", "8"],
                      _worker_env(tmp_path, i, TF_CONFIG=_tf_config(ports, i)))
               for i in range(2)]
    outputs = _run(workers)
    info = _check_two_workers(outputs, tmp_path / "m", tmp_path, epochs=2)
    assert info["config"]["architecture"] == "mobilenet_v3_small"
    assert all("fine-tuning the top" in err for _, err in outputs)


@pytest.mark.slow
def test_two_workers_resume_after_one_is_killed(three_shards, tmp_path):
    """A worker SIGKILLed mid-epoch (a preempted VM); the chief then hangs or fails. Both restarted with the
    same commands resume from the chief's last finished epoch, with the same weights."""
    epochs = 40
    model_dir = tmp_path / "m"

    def start(ports):
        return [_start([CATSDOGS, "train", "--data", three_shards, "--model-dir", str(model_dir), "--epochs",
                        str(epochs), "--image-size", "32", "--batch-size", "8"],
                       _worker_env(tmp_path, i, TF_CONFIG=_tf_config(ports, i)))
                for i in range(2)]

    metadata = model_dir / "backup" / "training_metadata.json"
    first = start(_free_ports(2))
    try:
        deadline = time.monotonic() + 300
        while _finished_epochs(metadata) < 2:
            assert all(w.poll() is None for w in first), "training ended before a worker could be killed"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
        os.killpg(first[1].pid, signal.SIGKILL)  # mid-epoch: no clean-up runs on the worker
    finally:
        _kill(first)
    killed_at = _finished_epochs(metadata)

    outputs = _run(start(_free_ports(2)))
    resumed = json.loads((model_dir / "training.json").read_text())["resumed_from_epoch"]
    assert resumed in (killed_at - 1, killed_at) and resumed >= 2  # the one before, if a kill tore the last
    assert all(f"Resuming from epoch {resumed}" in err for _, err in outputs)
    _check_two_workers(outputs, model_dir, tmp_path, epochs=epochs - resumed)


@pytest.mark.slow
def test_workers_that_see_different_backups_stop_with_one_error_line(three_shards, tmp_path):
    """The chief would resume from its backup while a worker without it started afresh, and both would wait
    forever for each other's steps: a --model-dir not shared among the workers."""
    command = [CATSDOGS, "train", "--data", three_shards, "--epochs", "40", "--image-size", "32", "--batch-size", "8"]
    metadata = tmp_path / "m0" / "backup" / "training_metadata.json"
    alone = _start([*command, "--model-dir", str(tmp_path / "m0")], _worker_env(tmp_path, 0))
    try:
        deadline = time.monotonic() + 300
        while _finished_epochs(metadata) < 1:
            assert alone.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
    finally:
        _kill([alone])

    ports = _free_ports(2)
    workers = [_start([*command, "--model-dir", str(tmp_path / f"m{i}")],
                      _worker_env(tmp_path, i, TF_CONFIG=_tf_config(ports, i))) for i in range(2)]
    try:
        outputs = [w.communicate(timeout=300) for w in workers]
    finally:
        _kill(workers)
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 2, err[-3000:]
        assert "catsdogs train: error: the workers see different backups under --model-dir" in err
    assert not (tmp_path / "m1").exists()


def _vertex_worker_pools(tmp_path) -> list[dict]:
    """The train step's worker pools as the compiled Vertex pipeline gives them to its custom job (2 machines:
    workerpool0 the chief, workerpool1 one worker)."""
    import yaml

    pipeline = tmp_path / "pipeline.yaml"
    subprocess.run([CATSDOGS, "compile", "--output", str(pipeline), "--machine", "CPU", "--replicas", "2"],
                   check=True, capture_output=True)
    pools = yaml.safe_load(pipeline.read_text())["components"]["comp-train"]["inputDefinitions"]["parameters"]
    return pools["worker_pool_specs"]["defaultValue"]


@pytest.mark.images
def test_two_trainer_containers_run_the_compiled_train_step(image, three_shards, tmp_path):
    """The train step's own container command from the compiled pipeline, in the trainer image, one container
    per worker pool on the host network, with CLUSTER_SPEC and TF_CONFIG as a Vertex custom job sets them and
    the pipeline root shared between them (a bucket on Vertex)."""
    from components.train.config import parameters

    trainer = image("trainer")
    pools = _vertex_worker_pools(tmp_path)
    assert [pool["replica_count"] for pool in pools] == [1, 1]
    assert {pool["container_spec"]["image_uri"] for pool in pools} == {trainer.removeprefix("localhost/")}
    root = tmp_path / "pipeline_root"
    root.mkdir()
    root.chmod(0o777)  # the container's user (uid 1000) writes here, as on a bucket mounted for it
    Path(three_shards).chmod(0o755)
    model_uri = "/outputs/train/model"
    executor_input = json.dumps({
        "inputs": {
            # every training parameter, as the Vertex pipeline passes them (TrainConfig's), sized down
            "parameterValues": {**parameters(), "epochs": 2, "batch_size": 8, "image_size": 32,
                                "learning_rate": 0.001, "architecture": "seed_cnn", "weights": "", "augment": False,
                                "fine_tune_epochs": 0},
            "artifacts": {"tfrecords": {"artifacts": [{
                "name": "tfrecords", "uri": "/data/tfrecords", "metadata": {},
                "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}]}},
        },
        "outputs": {
            "artifacts": {"model": {"artifacts": [{
                "name": "model", "uri": model_uri, "metadata": {},
                "type": {"schemaTitle": "system.Model", "schemaVersion": "0.0.1"}}]}},
            "outputFile": "/outputs/train/executor_output.json",
        },
    })
    ports = _free_ports(2)
    cluster = {"workerpool0": [f"127.0.0.1:{ports[0]}"], "workerpool1": [f"127.0.0.1:{ports[1]}"]}
    workers = []
    for index, pool in enumerate(pools):
        spec = pool["container_spec"]
        args = [executor_input if arg == "{{$.json_escape[1]}}" else arg for arg in spec["args"]]
        assert not [arg for arg in args if "{{" in arg], "train's args hold a placeholder this test does not fill"
        tmp = tmp_path / f"tmp{index}"
        tmp.mkdir()
        tmp.chmod(0o777)
        task = {"type": f"workerpool{index}", "index": 0}
        tf_config = {"cluster": {"chief": cluster["workerpool0"], "worker": cluster["workerpool1"]},
                     "task": {"type": "chief" if index == 0 else "worker", "index": 0}, "environment": "cloud"}
        workers.append(_start(
            [ENGINE, "run", "--rm", "--network", "host", "-v", f"{three_shards}:/data/tfrecords:ro",
             "-v", f"{root}:/outputs", "-v", f"{tmp}:/scratch", "--env", "TMPDIR=/scratch",
             "--env", f"CLUSTER_SPEC={json.dumps({'cluster': cluster, 'task': task, 'environment': 'cloud'})}",
             "--env", f"TF_CONFIG={json.dumps(tf_config)}",
             "--entrypoint", spec["command"][0], trainer, *spec["command"][1:], *args],
            {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}))
    outputs = _run(workers, timeout=500)

    model_dir = root / "train" / "model"
    _check_two_workers(outputs, model_dir, tmp_path, epochs=2)
    output = json.loads((root / "train" / "executor_output.json").read_text())
    assert output["artifacts"]["model"]["artifacts"][0]["metadata"]["framework"] == "tensorflow"


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(records, tmp_path):
    script = f"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from components.train.core import TrainConfig, train
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
result = train({records!r}, {str(tmp_path / "m")!r}, TrainConfig(epochs=1, image_size=32, batch_size=4), strategy)
import json; print(json.dumps({{"replicas": strategy.num_replicas_in_sync, "loss": result.history["loss"]}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                          env={**env, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and len(result["loss"]) == 1
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert info["replicas"] == 2 and info["precision"] == "float32"


def _finished_epochs(metadata) -> int:
    try:
        return json.loads(metadata.read_text()).get("epoch", 0)
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
        return 0


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_finished_epoch(records, tmp_path):
    command = [sys.executable, "-m", "pipelines.cli", "train", "--data", records, "--model-dir", str(tmp_path / "m"),
               "--epochs", "60", "--image-size", "32", "--batch-size", "8"]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    env["PYTHONPATH"] = ROOT
    metadata = tmp_path / "m" / "backup" / "training_metadata.json"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while _finished_epochs(metadata) < 3:
            assert first.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
    finally:
        first.kill()  # SIGKILL: no clean-up runs, and it may land in the middle of writing a checkpoint
        first.wait()
    killed_at = _finished_epochs(metadata)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    resumed = info["resumed_from_epoch"]
    assert resumed in (killed_at - 1, killed_at) and resumed >= 2  # the one before, if the kill tore the last
    assert f"Resuming from epoch {resumed}" in second.stderr
    assert len(info["history"]["loss"]) == 60 - resumed
    assert not (tmp_path / "m" / "backup").exists()  # removed once training completed


def test_a_torn_checkpoint_falls_back_to_the_previous_one(records, tmp_path, caplog):
    import keras

    from components.train.core import BACKUP_DIR, TrainConfig, train

    class Preempted(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # after the backup of the second epoch was written
                raise RuntimeError("preempted")

    config = TrainConfig(epochs=4, image_size=32, batch_size=8)
    with pytest.raises(RuntimeError, match="preempted"):
        train(records, str(tmp_path / "m"), config, callbacks=[Preempted()])
    torn = tmp_path / "m" / BACKUP_DIR / "latest.weights.h5"
    torn.write_bytes(torn.read_bytes()[:1000])  # as a kill in the middle of the next save would leave it

    with caplog.at_level("INFO"):
        result = train(records, str(tmp_path / "m"), config)
    assert "Resuming from epoch 1" in caplog.text  # the checkpoint before the torn one
    assert len(result.history["loss"]) == 3
