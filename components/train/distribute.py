"""Choosing the distribution strategy, as TensorFlow Cloud did: one switch from CPU to N GPUs to N nodes.

    several tasks in TF_CONFIG (or Vertex's CLUSTER_SPEC) -> MultiWorkerMirroredStrategy
    more than one GPU                                      -> MirroredStrategy
    one GPU                                                -> OneDeviceStrategy on it
    otherwise                                              -> the default strategy (CPU)
"""

import json
import logging
import os

import tensorflow as tf

log = logging.getLogger(__name__)

# Vertex AI names its worker pools; TensorFlow wants chief/worker/ps/evaluator. AI Platform's older clusters (and
# TF_CONFIGs written for them) call the chief "master", which TensorFlow's strategies do not accept and which
# would not count as a training task: it is the chief.
VERTEX_POOLS = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps", "workerpool3": "evaluator"}
TASK_TYPES = {**VERTEX_POOLS, "master": "chief"}


def _tf_task_type(name: str) -> str:
    return TASK_TYPES.get(name, name)


def _as_tf_config(config: dict) -> dict:
    """A cluster description with Vertex's or AI Platform's task type names (workerpoolN, master) in TensorFlow's."""
    cluster: dict[str, list] = {}
    for kind, hosts in config.get("cluster", {}).items():
        if hosts:
            cluster.setdefault(_tf_task_type(kind), []).extend(hosts)
    task = config["task"]
    return {"cluster": cluster, "task": {"type": _tf_task_type(task["type"]), "index": task.get("index", 0)}}


def tf_config_from_cluster_spec(cluster_spec: dict) -> dict:
    """Vertex's CLUSTER_SPEC ({"cluster": {"workerpool0": [...]}, "task": {"type": "workerpool0", ...}}) as
    TF_CONFIG."""
    return _as_tf_config(cluster_spec)


def cluster_config() -> dict | None:
    """The multi-node cluster this process belongs to (TF_CONFIG's shape), from TF_CONFIG or else Vertex's
    CLUSTER_SPEC; None when it trains alone."""
    if os.environ.get("TF_CONFIG"):
        config = _as_tf_config(json.loads(os.environ["TF_CONFIG"]))
    elif os.environ.get("CLUSTER_SPEC"):
        config = tf_config_from_cluster_spec(json.loads(os.environ["CLUSTER_SPEC"]))
    else:
        return None
    tasks = sum(len(hosts) for kind, hosts in config.get("cluster", {}).items() if kind in ("chief", "worker"))
    return config if tasks > 1 else None


def is_chief(config: dict | None) -> bool:
    """The task that writes the model and metrics: the chief, or worker 0 in a cluster without one."""
    if config is None:
        return True
    task = config["task"]
    has_chief = "chief" in config["cluster"]
    return task["type"] == "chief" or (not has_chief and task["type"] == "worker" and task["index"] == 0)


def worker_count(config: dict | None) -> int:
    if config is None:
        return 1
    return sum(len(hosts) for kind, hosts in config["cluster"].items() if kind in ("chief", "worker"))


def choose_strategy(config: dict | None) -> tf.distribute.Strategy:
    if config is not None:
        patch_keras_for_multi_worker()
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(config["cluster"]), task_type=config["task"]["type"],
            task_id=config["task"]["index"], rpc_layer="grpc",
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        log.info(devices_line("MultiWorkerMirroredStrategy", len(tf.config.list_logical_devices("GPU")),
                              worker_count(config)))
        return strategy
    gpus = tf.config.list_logical_devices("GPU")  # TensorFlow's own device list, not its log lines
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif gpus:
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name)
    else:
        strategy = tf.distribute.get_strategy()
    log.info(devices_line(type(strategy).__name__, len(gpus)))
    return strategy


def devices_line(strategy: str, gpus: int, workers: int = 1) -> str:
    """The one line that says where training runs, e.g. `training on 4 GPUs (MirroredStrategy)`."""
    devices = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "the CPU"
    if workers > 1:
        return f"training on {workers} nodes, each on {devices} ({strategy})"
    return f"training on {devices} ({strategy})" if gpus else "training on the CPU (no GPU found)"


def patch_keras_for_multi_worker() -> None:
    """Works around keras-team/keras#20585 (Keras 3.15): under MultiWorkerMirroredStrategy `Model.fit`
    (1) reduces a whole distributed input batch across workers just to learn its shapes, which fails on
    PerReplica data, and (2) reduces the scalar step logs with `axis=0`, which fails on 0-d values.

    We (1) learn the shapes from this worker's own part of the batch and (2) average the scalar logs across
    workers with `axis=None`. Both only apply in multi-worker mode; everything else goes to Keras unchanged.
    Remove when Keras fixes the issue (tests/test_distributed.py shows whether it still needs to exist).
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "catsdogs_patch", False):
        return
    reduce_per_replica = trainer.reduce_per_replica
    # Keras' own private functions are what the two bugs live in: patched here, nowhere else (SLF001 below).
    maybe_symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build  # noqa: SLF001

    def reduce_logs(values, strategy, reduction):
        if reduction == "auto" and trainer._collective_all_reduce_multi_worker(strategy):  # noqa: SLF001
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def build_from_local_batch(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if (iterator is not None and strategy is not None
                and trainer._collective_all_reduce_multi_worker(strategy)):  # noqa: SLF001
            for _, _, it in iterator:
                batch = next(it)
                break
            data_batch = tree.map_structure(lambda v: strategy.experimental_local_results(v)[0], batch)
            iterator = None
        return maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)

    reduce_logs.catsdogs_patch = True
    trainer.reduce_per_replica = reduce_logs
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch  # noqa: SLF001
