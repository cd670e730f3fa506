import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.errors import InputError
from components.evaluate.core import evaluate
from components.train.core import TrainConfig, train
from components.train.data import decode_and_resize, make_dataset
from tests.conftest import IMAGE_SIZE


def test_dataset_yields_resized_float_batches_with_labels(records):
    images, labels = next(iter(make_dataset(records, "TRAIN", IMAGE_SIZE, batch_size=4, training=True, seed=1)))
    assert images.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == tf.float32
    assert float(tf.reduce_max(images)) > 1.0  # 0..255: rescaling happens inside the model
    assert set(labels.numpy()) <= {0, 1}


def test_export_has_bytes_and_pixel_signatures_that_agree(trained_model, sample_images):
    loaded = tf.saved_model.load(trained_model)
    assert set(loaded.signatures) == {"serving_default", "predict_pixels", "model_info", "serving_profile",
                                      "profile_pixels"}
    info = loaded.signatures["model_info"]()
    assert int(info["image_size"]) == IMAGE_SIZE and [c.decode() for c in info["classes"].numpy()] == ["cats", "dogs"]
    paths = [os.path.join(sample_images, label, f"{label}.00003.jpg") for label in ("cats", "dogs")]
    encoded = [open(p, "rb").read() for p in paths]
    from_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    decoded = [decode_and_resize(tf.constant(b), IMAGE_SIZE) for b in encoded]
    from_pixels = [loaded.signatures["predict_pixels"](pixels=p[tf.newaxis]) for p in decoded]
    np.testing.assert_allclose(from_bytes["probabilities"].numpy(),
                               np.concatenate([o["probabilities"].numpy() for o in from_pixels]), atol=1e-5)
    probabilities = from_bytes["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert [c.decode() for c in from_bytes["classes"].numpy()[0]] == ["cats", "dogs"]
    assert [label.decode() for label in from_bytes["labels"].numpy()] == [
        ["cats", "dogs"][i] for i in probabilities.argmax(axis=1)
    ]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_export_gives_the_keras_models_probabilities(tmp_path, sample_images, num_classes):
    from components.train.export import class_probabilities, export_saved_model
    from components.train.models import seed_cnn

    model = seed_cnn(IMAGE_SIZE, num_classes)
    names = ["a", "b", "c"][:num_classes]
    export_saved_model(model, names, IMAGE_SIZE, str(tmp_path / "export"))
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    encoded = [open(os.path.join(sample_images, "cats", f"cats.0000{i}.jpg"), "rb").read() for i in range(3)]
    pixels = tf.stack([decode_and_resize(tf.constant(b), IMAGE_SIZE) for b in encoded])
    expected = class_probabilities(model(pixels)).numpy()
    assert expected.shape == (3, num_classes)
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(loaded.signatures["predict_pixels"](pixels=pixels)["probabilities"].numpy(), expected,
                               atol=1e-5)


def test_training_history_and_class_names_are_saved_beside_the_model(trained_model):
    saved = json.loads(open(os.path.join(trained_model, "training.json")).read())
    assert saved["class_names"] == ["cats", "dogs"]
    assert len(saved["history"]["loss"]) == 2


def test_evaluation_counts_every_test_record(trained_model, records):
    result = evaluate(trained_model, records)
    summary = json.loads(open(os.path.join(records, "summary.json")).read())
    assert result.split == "TEST"
    assert result.examples == summary["per_split"]["TEST"] == int(np.sum(result.confusion_matrix))
    assert result.accuracy == pytest.approx(np.trace(result.confusion_matrix) / result.examples)
    assert set(result.per_class()) == {"cats", "dogs"}


@pytest.mark.slow
def test_three_classes_train_with_softmax_and_learn(tmp_path):
    from components.convert.pipeline import convert
    from components.prepare import prepare_csv
    from components.sample_data import generate_sample

    generate_sample(str(tmp_path / "images"), per_class=40, classes=("cats", "dogs", "birds"))
    prepare_csv(str(tmp_path / "images"), str(tmp_path / "images.csv"), 0.7, 0.0)
    convert(str(tmp_path / "images.csv"), str(tmp_path / "data"))
    train(str(tmp_path / "data"), str(tmp_path / "model"), TrainConfig(epochs=10, image_size=IMAGE_SIZE, batch_size=16))
    result = evaluate(str(tmp_path / "model"), str(tmp_path / "data"))
    assert result.class_names == ["birds", "cats", "dogs"]
    assert len(result.confusion_matrix) == 3
    assert result.accuracy > 0.8  # chance is 0.33; the classes differ in hue and shape


@pytest.mark.parametrize(
    "config, message",
    [(TrainConfig(epochs=0), "--epochs"), (TrainConfig(image_size=8), "--image-size"),
     (TrainConfig(architecture="resnet9000"), "unknown"), (TrainConfig(learning_rate=0), "learning-rate"),
     (TrainConfig(learning_rate=float("inf")), "learning-rate")],
)
def test_bad_training_settings_are_refused(records, tmp_path, config, message):
    with pytest.raises(InputError, match=message):
        train(records, str(tmp_path / "m"), config)


def test_training_on_a_folder_that_is_not_conversion_output_says_so(tmp_path):
    with pytest.raises(InputError, match="labels.json not found"):
        train(str(tmp_path), str(tmp_path / "m"), TrainConfig(epochs=1))


def test_auc_and_roc_match_hand_computed_values():
    from components.evaluate.core import auc, roc_curve

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
    positives = np.array([True, False, True, True, False, False])
    assert auc(scores, positives) == pytest.approx(7 / 9)  # 7 of the 9 positive/negative pairs are ordered
    fpr, tpr, thresholds = roc_curve(scores, positives)
    assert thresholds[0] == 0.9 and thresholds[-1] == 0.2
    assert (fpr[0], tpr[0]) == (0.0, pytest.approx(1 / 3)) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.isnan(auc(scores, np.zeros(6, dtype=bool)))


def test_evaluation_has_auc_roc_and_an_html_report_with_pictures(trained_model, records):
    from components.evaluate.report import html_report
    from components.model_store import training_info

    result = evaluate(trained_model, records)
    assert 0.0 <= result.auc <= 1.0
    assert len(result.roc["fpr"]) == len(result.roc["tpr"]) == len(result.roc["thresholds"]) >= 1
    page = html_report(result, training_info(trained_model)["history"])
    # training curves, ROC, per-class precision/recall, reliability, precision-recall at the threshold (matplotlib)
    assert page.count("<svg") == 5
    assert len(result.gallery) == min(result.examples, 24)
    overlays = sum(bool(e.saliency) for e in result.gallery)  # saliency of the first few, label-issue gallery
    assert page.count('src="data:image/jpeg;base64,') == len(result.gallery) + overlays + len(result.issue_gallery)
    mistakes = [e.mistake for e in result.gallery]
    assert mistakes == sorted(mistakes, reverse=True)  # mistakes first
    assert f"accuracy <b>{result.accuracy:.4f}</b>" in page
    for name in result.class_names:
        assert f"<th>{name}</th>" in page
    assert str(result.confusion_matrix[0][0]) in page


def test_augmentation_keeps_shape_and_changes_pixels():
    from components.train.data import augment

    image = tf.reshape(tf.range(32 * 32 * 3, dtype=tf.float32), [32, 32, 3])
    tf.random.set_seed(1)
    outputs = [augment(image) for _ in range(4)]
    assert all(o.shape == (32, 32, 3) for o in outputs)
    assert any(float(tf.reduce_max(tf.abs(o - image))) > 0 for o in outputs)


@pytest.mark.slow
def test_mobilenet_backbone_trains_and_exports(records, tmp_path):
    train(records, str(tmp_path / "m"),
          TrainConfig(epochs=1, image_size=32, batch_size=16, architecture="mobilenet_v3_small"))
    result = evaluate(str(tmp_path / "m"), records)
    assert result.examples > 0
    saved = json.loads(open(tmp_path / "m" / "training.json").read())
    assert saved["config"]["architecture"] == "mobilenet_v3_small"


def test_weights_file_must_exist(records, tmp_path):
    with pytest.raises(InputError, match="--weights"):
        train(records, str(tmp_path / "m"), TrainConfig(weights=str(tmp_path / "nope.weights.h5")))


def _copy_records(records, tmp_path) -> str:
    import shutil

    return shutil.copytree(records, tmp_path / "data")


def test_a_diverging_run_stops_with_one_line_and_exports_nothing(records, tmp_path):
    with pytest.raises(InputError, match=r"training diverged: loss became NaN at epoch 1; lower --learning-rate"):
        train(records, str(tmp_path / "m"), TrainConfig(epochs=3, image_size=IMAGE_SIZE, batch_size=8,
                                                        learning_rate=1e4))
    assert not (tmp_path / "m" / "saved_model.pb").exists() and not (tmp_path / "m" / "backup").exists()


def test_a_nan_model_is_never_scored_deployable(records, tmp_path):
    from components.train.export import export_saved_model
    from components.train.models import seed_cnn

    model = seed_cnn(IMAGE_SIZE, 2)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    export_saved_model(model, ["cats", "dogs"], IMAGE_SIZE, str(tmp_path / "m"))
    (tmp_path / "m" / "training.json").write_text(json.dumps({"config": {"image_size": IMAGE_SIZE}}))
    with pytest.raises(InputError, match="NaN probabilities .* not deployable"):
        evaluate(str(tmp_path / "m"), records)


def test_training_without_a_held_out_split_is_refused_before_it_starts(records, tmp_path):
    data = _copy_records(records, tmp_path)
    summary = json.loads((data / "summary.json").read_text())
    summary["per_split"] = {"TRAIN": summary["per_split"]["TRAIN"]}
    (data / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match="no TEST or VALIDATION records"):
        train(str(data), str(tmp_path / "m"), TrainConfig(epochs=1, image_size=IMAGE_SIZE))
    assert not (tmp_path / "m").exists()


def test_a_corrupt_shard_is_named(records, tmp_path):
    data = _copy_records(records, tmp_path)
    shard = data / "train-00000-of-00001.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte: the record's CRC no longer matches
    shard.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"corrupt TFRecord shard: .*train-00000-of-00001\.tfrecord"):
        train(str(data), str(tmp_path / "m"), TrainConfig(epochs=1, image_size=IMAGE_SIZE, batch_size=8))


def test_a_leftover_shard_of_another_conversion_is_named(records, tmp_path):
    data = _copy_records(records, tmp_path)
    (data / "train-00001-of-00003.tfrecord").write_bytes((data / "train-00000-of-00001.tfrecord").read_bytes())
    with pytest.raises(InputError, match=r"train-00001-of-00003\.tfrecord: unexpected extra shard"):
        train(str(data), str(tmp_path / "m"), TrainConfig(epochs=1, image_size=IMAGE_SIZE, batch_size=8))


def test_a_backup_made_with_other_settings_is_not_resumed(records, tmp_path):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # killed after the first epoch's backup

    model_dir = str(tmp_path / "m")
    with pytest.raises(KeyboardInterrupt):
        train(records, model_dir, TrainConfig(epochs=2, image_size=IMAGE_SIZE, batch_size=8), callbacks=[Interrupt()])
    with pytest.raises(InputError, match=r"backup holds an interrupted run with other settings \(image_size 32, now "
                                         r"48\).*delete .*backup to start over"):
        train(records, model_dir, TrainConfig(epochs=2, image_size=48, batch_size=8))
    result = train(records, model_dir, TrainConfig(epochs=2, image_size=IMAGE_SIZE, batch_size=8))  # resumes
    assert len(result.history["loss"]) == 1


def test_image_size_has_an_upper_bound_that_fits_memory(records, tmp_path):
    with pytest.raises(InputError, match="--image-size must be between 32 and 1024"):
        train(records, str(tmp_path / "m"), TrainConfig(image_size=4096))


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_every_cache_mode_gives_the_same_pixels(records, tmp_path, cache):
    cache = str(tmp_path / "cache") if cache == "disk" else cache
    reference = [x.numpy() for x, _ in make_dataset(records, "TEST", IMAGE_SIZE, 64, cache="none")][0]
    dataset = make_dataset(records, "TEST", IMAGE_SIZE, 64, cache=cache)
    for _ in range(2):  # the second pass reads the cache
        pixels = [x.numpy() for x, _ in dataset][0]
        np.testing.assert_array_equal(pixels, reference)
        assert pixels.dtype == np.float32
    if cache.startswith("/"):
        assert os.listdir(cache)


def test_the_cache_is_kept_only_within_its_memory_budget():
    from components.train.data import CACHE_BUDGET_BYTES, cache_mode

    assert cache_mode("auto", 1000, 150) == "memory"
    assert cache_mode("auto", CACHE_BUDGET_BYTES // (150 * 150 * 3) + 1, 150) == "none"
    assert cache_mode("auto", 0, 150) == "none"  # size unknown: stream
    assert cache_mode("/tmp/c", 10**9, 150) == "/tmp/c" and cache_mode("memory", 10**9, 150) == "memory"


def test_the_cli_says_training_diverged_in_one_line_and_exits_2(records, tmp_path, capsys):
    from pipelines.cli import main

    code = main(["train", "--data", records, "--model-dir", str(tmp_path / "m"), "--epochs", "2",
                 "--image-size", str(IMAGE_SIZE), "--batch-size", "8", "--learning-rate", "10000", "--cache", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == "catsdogs train: error: training diverged: loss became NaN at epoch 1; lower --learning-rate " \
                      "(now 10000.0)"
