"""Strategy selection and real distributed training on this machine's CPU: two local worker processes, and
MirroredStrategy over two logical CPU devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from components.train import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.mark.slow
def test_two_local_workers_train_to_identical_weights(records, tmp_path):
    ports = ",".join(map(str, _free_ports(2)))
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLUSTER_SPEC")}
    env.update(PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
    workers = [
        subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "multi_worker_train.py"), records,
                          str(tmp_path / "model"), str(i), ports],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        for i in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=240) for w in workers]
    finally:
        for w in workers:  # a failed collective leaves the peer hanging, deaf to SIGTERM
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0]["weights"] == results[1]["weights"]
    assert [r["epochs"] for r in results] == [2, 2]
    assert results[0]["export_dir"] == str(tmp_path / "model")  # worker 0 is the chief and writes the model
    assert results[1]["export_dir"] != results[0]["export_dir"]
    assert os.path.isfile(tmp_path / "model" / "saved_model.pb")


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
