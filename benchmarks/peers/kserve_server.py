"""KServe's Python model server (kserve 0.21) on the SavedModel: a `kserve.Model` whose `predict` calls
`serving_default`, served by `kserve.ModelServer` on its v1 protocol (TF Serving's REST:
POST /v1/models/catsdogs:predict), as KServe's custom-model guide sets it up.

    .venv-peers/bin/python benchmarks/peers/kserve_server.py MODEL_DIR HOST PORT WARM_IMAGE

No batching here: KServe batches in its Go agent (the InferenceService's `batcher:`, a sidecar in the
cluster), which is not part of the Python package. Runs in its own venv (kserve needs pandas<3).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from savedmodel import SavedModel, args, instance_bytes


def main() -> None:
    import kserve

    model_dir, host, port, warm = args()

    class CatsDogs(kserve.Model):
        def __init__(self):
            super().__init__("catsdogs")
            self.load()

        def load(self) -> bool:
            self.model = SavedModel(model_dir, warm)
            self.ready = True
            return self.ready

        def predict(self, payload, headers=None, response_headers=None):
            return {"predictions": self.model.predict(instance_bytes(payload))}

    # no per-request latency log lines (ours writes none either)
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False)
    server.start([CatsDogs()])


if __name__ == "__main__":
    main()
