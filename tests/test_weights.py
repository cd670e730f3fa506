"""--weights (none, a file, Keras' ImageNet weights from its cache) and --fine-tune-epochs. Nothing downloads:
the cached file is made here under the name Keras gives it, and "no network" is a proxy on a closed port."""

import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SIZE

from components.errors import InputError
from components.train import finetune, weights
from components.train.models import mobilenet_v3_small

KERAS_FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty Keras cache and no way out: every download fails at once (connection refused)."""
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def _backbone(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV3Small(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), include_top=False,
                                               weights=None, include_preprocessing=True)


@pytest.fixture
def cached_imagenet(offline) -> keras.Model:
    """A freshly initialised backbone's weights saved in Keras' cache under the ImageNet file's name, in the
    legacy HDF5 layout Keras' application files use; returns that backbone to compare with."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    source = _backbone(seed=1)
    os.makedirs(offline / "models")
    with h5py.File(offline / "models" / KERAS_FILE, "w") as f:
        save_weights_to_hdf5_group(f, source)
    return source


def test_the_expected_file_name_is_the_one_keras_downloads():
    spec = weights.IMAGENET_WEIGHTS["mobilenet_v3_small"]()
    assert spec.file_name == KERAS_FILE
    assert spec.origin.endswith("/mobilenet_v3/" + KERAS_FILE) and spec.origin.startswith("https://")


def test_imagenet_weights_come_from_keras_cache_without_a_download(cached_imagenet, offline):
    assert weights.local_path("imagenet", "mobilenet_v3_small") == str(offline / "models" / KERAS_FILE)
    model = mobilenet_v3_small(IMAGE_SIZE, 2, "imagenet")  # built with another seed than the cached weights
    loaded = finetune.backbone(model).get_weights()
    fresh = _backbone(seed=2).get_weights()
    expected = cached_imagenet.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, expected))  # the seed alone would not do it


def test_without_network_and_cache_the_error_says_where_to_put_the_file(offline):
    with pytest.raises(InputError) as raised:
        weights.local_path("imagenet", "mobilenet_v3_small")
    message = str(raised.value)
    assert "\n" not in message
    assert f"put the file at {offline / 'models' / KERAS_FILE}" in message
    assert not (offline / "models" / KERAS_FILE).exists()  # no half-downloaded file left to be trusted later


def test_the_train_command_fails_in_one_line_with_exit_2(offline, records, tmp_path, capsys):
    from pipelines.cli import main

    code = main(["train", "--data", records, "--model-dir", str(tmp_path / "model"), "--architecture",
                 "mobilenet_v3_small", "--weights", "imagenet", "--epochs", "1", "--image-size", str(IMAGE_SIZE)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("catsdogs train: error: --weights imagenet:") and KERAS_FILE in err[0]


@pytest.mark.parametrize("value, architecture, message", [
    ("imagenet", "seed_cnn", "seed_cnn has no pretrained backbone"),
    ("/nowhere/w.weights.h5", "seed_cnn", "--weights /nowhere/w.weights.h5 does not exist"),
])
def test_weights_that_can_never_load_are_refused_before_anything_runs(value, architecture, message):
    with pytest.raises(InputError, match=message):
        weights.check(value, architecture)


def test_no_weights_and_a_local_file_pass_through(tmp_path):
    assert weights.local_path("", "seed_cnn") is None
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"x")
    assert weights.local_path(str(path), "seed_cnn") == str(path)


def test_fine_tuning_needs_a_backbone_and_a_non_negative_count():
    with pytest.raises(InputError, match="needs an architecture with a pretrained backbone"):
        weights.check_fine_tune(2, "seed_cnn", "")
    with pytest.raises(InputError, match="0 or more"):
        weights.check_fine_tune(-1, "mobilenet_v3_small", "imagenet")


def test_fine_tuning_trains_the_head_then_only_the_top_of_the_backbone(cached_imagenet, records, tmp_path):
    from components.train.core import TrainConfig, compile_model
    from components.train.data import make_dataset

    config = TrainConfig(epochs=1, fine_tune_epochs=1, image_size=IMAGE_SIZE, batch_size=8,
                         architecture="mobilenet_v3_small", weights="imagenet")
    model = compile_model(config, 2)
    base = finetune.backbone(model)
    assert not base.trainable and model.trainable_weights  # the head alone trains first
    data = make_dataset(records, "TRAIN", IMAGE_SIZE, 8, training=True)
    history = finetune.fit(model, tf.distribute.get_strategy(), data, None, 1, 1, 1e-3, [], [],
                           str(tmp_path / "backup"))
    assert len(history["loss"]) == 2
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-5)

    before = {layer.name: layer.get_weights() for layer in cached_imagenet.layers}
    changed = {layer.name for layer in base.layers
               if layer.get_weights() and not all(np.array_equal(a, b)
                                                  for a, b in zip(layer.get_weights(), before[layer.name]))}
    top = {layer.name for layer in base.layers if layer.trainable}
    batch_norms = {layer.name for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert changed and changed <= top  # only unfrozen layers moved
    assert not changed & batch_norms  # batch norm statistics kept (inference mode)
    assert len([layer for layer in base.layers if layer.get_weights()]) > len(top)  # the bottom stayed frozen


def test_train_with_fine_tuning_records_both_phases_and_cleans_up(cached_imagenet, records, tmp_path):
    from components.model_store import training_info
    from components.train.core import TrainConfig, train

    model_dir = str(tmp_path / "model")
    result = train(records, model_dir, TrainConfig(epochs=1, fine_tune_epochs=1, image_size=IMAGE_SIZE,
                                                   batch_size=8, architecture="mobilenet_v3_small", weights="imagenet"))
    assert len(result.history["loss"]) == 2
    assert training_info(model_dir)["config"]["fine_tune_epochs"] == 1
    assert not os.path.exists(os.path.join(model_dir, finetune.BACKUP_DIR))
    assert not os.path.exists(os.path.join(model_dir, "backup"))


def test_a_weights_file_in_gcs_is_fetched_and_loaded(gcs_bucket, tmp_path):
    from components import storage
    from components.train.models import seed_cnn

    keras.utils.set_random_seed(4)
    source = seed_cnn(IMAGE_SIZE, 2)
    local = tmp_path / "seed.weights.h5"
    source.save_weights(str(local))
    uri = f"{gcs_bucket}/weights/seed.weights.h5"
    storage.write_bytes(uri, local.read_bytes())
    keras.utils.set_random_seed(5)
    loaded = seed_cnn(IMAGE_SIZE, 2, uri)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), source.get_weights()))
