import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from fake_metadata import start_for_session

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.pop("WANDB_API_KEY", None)  # a developer's key must not send test runs to W&B (offline is the default)
# Commands' quiet logs (pipelines/progress.process_log) go here, not into the developer's ~/.local/state.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="catsdogs-state-")

# Every test runs as on a Google Cloud machine (tests/fake_metadata.py): before anything below imports google-auth.
METADATA = start_for_session()

from components.convert.pipeline import convert  # noqa: E402
from components.prepare import prepare_csv  # noqa: E402
from components.sample_data import generate_sample  # noqa: E402

IMAGE_SIZE = 32
# `catsdogs run` flags for a run that must publish a version: its model has to beat always answering one class on
# a TEST split of 9 images. Training reads its records in a nondeterministic order (tf.data, for speed), so a run
# is not repeatable; with the default batch of 32 (2 steps an epoch) 3 of 5 runs of 40 per class were refused,
# with batches of 8 none of 8 (2026-12-05).
DEPLOYS = ["--per-class", "40", "--epochs", "3", "--image-size", str(IMAGE_SIZE), "--batch-size", "8"]


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


@pytest.fixture(scope="module")
def model_base(trained_model, tmp_path_factory) -> str:
    """A model base holding the session's trained model as version 1, one per test module."""
    from components.model_store import publish_version

    base = str(tmp_path_factory.mktemp("models") / "catsdogs")
    assert publish_version(trained_model, base) == 1
    return base


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


@pytest.fixture
def metadata_server():
    """The session's fake GCE metadata server (tests/fake_metadata.py), its request log cleared."""
    METADATA.requests.clear()
    yield METADATA
    METADATA.answering = True


@pytest.fixture
def off_google_cloud(metadata_server, monkeypatch):
    """This process as on a laptop: the metadata server does not answer and the machine's DMI product name is not
    Google's (google-auth falls back to reading it when the server is silent; on a Google VM it says "Google")."""
    from google.auth.compute_engine import _metadata

    product_name = tempfile.NamedTemporaryFile("w", suffix="product_name", delete=False)
    product_name.write("Standard PC\n")
    product_name.close()
    monkeypatch.setattr(_metadata, "_GCE_PRODUCT_NAME_FILE", product_name.name)
    metadata_server.answering = False
    yield metadata_server
    os.unlink(product_name.name)


@pytest.fixture(scope="session")
def image():
    """image(name) builds catsdogs-<name>:latest with images/build.sh, once per session, and returns its tag."""
    built = set()
    build_sh = Path(__file__).resolve().parent.parent / "images" / "build.sh"

    def build(name: str) -> str:
        if name not in built:
            result = subprocess.run([str(build_sh), name], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.fail(f"images/build.sh {name} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                            f"{result.stderr[-4000:]}")
            built.add(name)
        return f"catsdogs-{name}:latest"

    return build


def export_tiny_model(model_dir: str, kernel, image_size: int = 8) -> str:
    """A SavedModel exported by our exporter (with a training.json) from a one-unit Keras model on the image's
    mean colour: `kernel` is its 3 weights. All NaN: a diverged model, answering NaN for every image."""
    import json

    import keras
    import numpy as np

    from components.train.export import export_saved_model

    inputs = keras.Input((image_size, image_size, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.set_weights([np.array(kernel, np.float32).reshape(3, 1), np.zeros(1, np.float32)])
    export_saved_model(model, ["cats", "dogs"], image_size, model_dir)
    info = {"config": {"image_size": image_size}, "class_names": ["cats", "dogs"], "history": {}}
    Path(model_dir, "training.json").write_text(json.dumps(info))
    return model_dir


@pytest.fixture(scope="session")
def diverged_model(tmp_path_factory) -> str:
    """A SavedModel whose weights are all NaN, as an older release could publish one."""
    return export_tiny_model(str(tmp_path_factory.mktemp("diverged") / "saved_model"), [float("nan")] * 3)
