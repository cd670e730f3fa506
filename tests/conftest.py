import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("WANDB_API_KEY", None)  # a developer's key must not send test runs to W&B (offline is the default)

from components.convert.pipeline import convert  # noqa: E402
from components.prepare import prepare_csv  # noqa: E402
from components.sample_data import generate_sample  # noqa: E402

IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> str:
    """A small generated image set: 20 per class, cats and dogs, <label>/<file>."""
    root = tmp_path_factory.mktemp("images")
    generate_sample(str(root), per_class=20)
    return str(root)


@pytest.fixture(scope="session")
def records(sample_images, tmp_path_factory) -> str:
    """TFRecords of the sample, converted once for the session."""
    out = tmp_path_factory.mktemp("data")
    prepare_csv(sample_images, str(out / "images.csv"), train_fraction=0.6, validation_fraction=0.2)
    convert(str(out / "images.csv"), str(out / "tfrecords"))
    return str(out / "tfrecords")


@pytest.fixture(scope="session")
def trained_model(records, tmp_path_factory) -> str:
    """A SavedModel trained for two epochs on the sample records."""
    from components.train.core import TrainConfig, train

    model_dir = str(tmp_path_factory.mktemp("model") / "saved_model")
    train(records, model_dir, TrainConfig(epochs=2, image_size=IMAGE_SIZE, batch_size=16))
    return model_dir


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """fake-gcs-server and its proxy (tests/gcs_harness.py), started once for the session."""
    from gcs_harness import GcsEmulator

    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator, monkeypatch, request) -> str:
    """A new, empty bucket as gs://NAME, with this process and its children pointed at the emulator."""
    for name, value in gcs_emulator.environment.items():
        monkeypatch.setenv(name, value)
    from google.cloud import storage

    name = "test-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    storage.Client().create_bucket(name)
    return f"gs://{name}"
