"""BentoML (1.4) on the SavedModel: a `@bentoml.service` whose batchable `@bentoml.api` calls `serving_default`,
with BentoML's adaptive batching on (max_batch_size 32), started with `bentoml serve` as its docs do.

    .venv-bentoml/bin/python benchmarks/peers/bentoml_server.py MODEL_DIR HOST PORT WARM_IMAGE

BentoML maps a JSON body's keys to the API's parameters: {"instances": [{"b64": ...}]} is our request, and a
batchable API answers each request with its slice of the batch, a bare JSON list of predictions. Runs in its
own venv: bentoml 1.4.40 pins opentelemetry 0.4xb0 and our lock pins 0.66b2.
"""

from __future__ import annotations

import os
import sys

import bentoml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from savedmodel import SavedModel, instance_bytes

MAX_BATCH = 32  # as `catsdogs serve --max-batch`'s default


@bentoml.service(workers=1)
class CatsDogs:
    def __init__(self):
        with open(os.environ["CATSDOGS_WARM_IMAGE"], "rb") as f:
            self.model = SavedModel(os.environ["CATSDOGS_MODEL_DIR"], f.read())

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    def predict(self, instances: list[dict]) -> list[dict]:
        return self.model.predict(instance_bytes({"instances": instances}))


def main() -> None:
    model_dir, host, port, image = sys.argv[1:5]
    os.environ.update(CATSDOGS_MODEL_DIR=model_dir, CATSDOGS_WARM_IMAGE=image)
    bentoml_cli = os.path.join(os.path.dirname(sys.executable), "bentoml")
    os.execv(bentoml_cli, [bentoml_cli, "serve", "bentoml_server:CatsDogs", "--host", host, "--port", port,
                           "--working-dir", os.path.dirname(os.path.abspath(__file__))])


if __name__ == "__main__":
    main()
