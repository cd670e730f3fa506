"""One worker of a local multi-node training run (started by tests/test_distributed.py).

    python tests/multi_worker_train.py DATA_DIR MODEL_DIR INDEX PORT0,PORT1

Sets TF_CONFIG for a two-worker cluster on 127.0.0.1, trains, and prints one JSON line: this worker's
export folder and a digest of its final weights.
"""

import hashlib
import json
import os
import sys

data_dir, model_dir, index, ports = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
    "task": {"type": "worker", "index": index},
})

import tensorflow as tf  # noqa: E402 - TF_CONFIG must be set first

from components.train.core import TrainConfig, train  # noqa: E402

result = train(data_dir, model_dir, TrainConfig(epochs=2, image_size=32, batch_size=8))
variables = tf.saved_model.load(result.export_dir).variables
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in sorted(variables, key=lambda v: v.name))).hexdigest()
print(json.dumps({"index": index, "export_dir": result.export_dir, "weights": digest,
                  "epochs": len(result.history["loss"])}), flush=True)
