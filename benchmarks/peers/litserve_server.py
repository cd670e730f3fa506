"""LitServe (0.2.19) on the SavedModel: a `LitAPI` whose `predict` calls `serving_default` on a whole batch,
with LitServe's dynamic batching on (`max_batch_size`, `batch_timeout`), as its batching guide sets it up.

    .venv/bin/python benchmarks/peers/litserve_server.py MODEL_DIR HOST PORT WARM_IMAGE

Requests are ours ({"instances": [{"b64": ...}]}, one image each) on LitServe's POST /predict. LitServe runs the
API in an inference worker process it spawns, so the API class lives at module level (it is pickled).
"""

from __future__ import annotations

import os
import sys

import litserve as ls

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from savedmodel import SavedModel, args, instance_bytes

MAX_BATCH = 32  # as `catsdogs serve --max-batch`'s default
BATCH_TIMEOUT_S = 0.005


class CatsDogs(ls.LitAPI):
    def __init__(self, model_dir: str, warm: bytes, **batching):
        super().__init__(**batching)
        self.model_dir, self.warm = model_dir, warm

    def setup(self, device):
        self.model = SavedModel(self.model_dir, self.warm)

    def decode_request(self, request):
        (image,) = instance_bytes(request)  # one image per request: what LitServe's batcher batches
        return image

    def predict(self, images):
        return self.model.predict(list(images))

    def encode_response(self, prediction):
        return {"predictions": [prediction]}


def main() -> None:
    model_dir, host, port, warm = args()
    api = CatsDogs(model_dir, warm, max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host=host, port=port, generate_client_file=False)


if __name__ == "__main__":
    main()
