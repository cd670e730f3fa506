"""Why the model is right or wrong: calibration, label issues and the model card in the evaluate step."""

import csv
import glob
import os
import re
import shutil

import numpy as np
import pytest

from components.evaluate.calibration import reliability
from components.evaluate.label_issues import FIELDS, find_label_issues
from components.evaluate.model_card import SECTIONS
from components.sample_data import generate_sample
from pipelines.cli import main


def test_ece_is_the_weighted_gap_between_confidence_and_accuracy():
    # Bin 0.9-1.0: 4 images at 0.95, 2 right (accuracy 0.5); bin 0.6-0.7: 2 images at 0.65, both right.
    probabilities = np.array([[0.95, 0.05]] * 4 + [[0.35, 0.65]] * 2)
    labels = np.array([0, 0, 1, 1, 1, 1])
    result = reliability(probabilities, labels)
    assert result["ece"] == pytest.approx(4 / 6 * 0.45 + 2 / 6 * 0.35)
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["lower"], b["count"], b["accuracy"]) for b in filled] == [(0.6, 2, 1.0), (0.9, 4, 0.5)]
    assert reliability(np.array([[0.2, 0.8]] * 5), np.array([1, 1, 1, 1, 0]))["ece"] == pytest.approx(0.0)


def test_planted_flipped_labels_rank_first_and_clean_ones_are_not_flagged():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(0, 1, (300, 3))
    logits[np.arange(300), labels] += 4  # a decent model: the given label usually wins
    flipped = [7, 100, 250]
    for i in flipped:  # the model is sure of the true class; the given label says another
        logits[i] = -3
        logits[i, labels[i]] = 6
        labels[i] = (labels[i] + 1) % 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    issues = find_label_issues(probabilities, labels)
    assert sorted(issues[:3].tolist()) == flipped
    assert len(issues) < 30
    assert find_label_issues(np.eye(3)[labels], labels).tolist() == []


def test_record_uris_follow_the_order_the_model_is_scored_in(records):
    from components.evaluate.core import record_uris
    from components.train.data import make_dataset

    labels = np.concatenate([y.numpy() for _, y in make_dataset(records, "TEST", 32, 5, cache="none")])
    found = record_uris(records, "TEST", set(range(len(labels))))
    assert [found[i][1] for i in range(len(labels))] == labels.tolist()
    assert all(os.path.isfile(found[i][0]) for i in found) and len({u for u, _ in found.values()}) == len(labels)


def _split_folders(flat: str, out: str, flips: int) -> list[str]:
    """flat/<label>/* -> out/<split>/<label>/*, a fixed share per split; the first `flips` TEST dogs are filed
    under cats (wrong labels). Returns the planted files' paths."""
    planted = []
    for label in ("cats", "dogs"):
        files = sorted(os.listdir(os.path.join(flat, label)))
        for i, name in enumerate(files):
            split = "train" if i < len(files) * 0.6 else "validation" if i < len(files) * 0.8 else "test"
            given = label
            if split == "test" and label == "dogs" and len(planted) < flips:
                given = "cats"
            target = os.path.join(out, split, given, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(os.path.join(flat, label, name), target)
            if given != label:
                planted.append(target)
    return planted


@pytest.mark.slow
def test_run_reports_calibration_label_issues_and_a_model_card(tmp_path, capsys):
    generate_sample(str(tmp_path / "flat"), per_class=50)
    planted = _split_folders(str(tmp_path / "flat"), str(tmp_path / "images"), flips=3)
    workdir = str(tmp_path / "w")
    assert main(["run", str(tmp_path / "images"), "--workdir", workdir, "--epochs", "4", "--image-size", "32",
                 "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    [step] = glob.glob(os.path.join(workdir, "pipeline_root", "*", "evaluate"))
    copies = os.path.join(workdir, "reports", step.split(os.sep)[-2])
    for name in ("label_issues.csv", "model_card.md"):
        assert open(os.path.join(copies, name)).read() == open(os.path.join(step, name)).read()
    assert re.search(r"^calibration +ECE \d\.\d{4} ", out, re.M)
    assert re.search(r"^label issues +\d+ in \S+label_issues\.csv$", out, re.M)
    assert re.search(r"ECE \d\.\d{3}, \d+ label issues, saliency \d+\.\d s", out), out

    with open(os.path.join(step, "label_issues.csv")) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == FIELDS
    assert {r["uri"] for r in rows[:3]} == {os.path.abspath(p) for p in planted}, rows[:5]
    assert all(r["given"] == "cats" and r["predicted"] == "dogs" for r in rows[:3])
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)

    page = open(os.path.join(step, "report")).read()
    for section in ('id="calibration"', 'id="label-issues"', 'id="label-issue-gallery"', 'id="model-card"'):
        assert section in page
    assert "Reliability on TEST" in page and page.count('<figure class="mistake"') >= 3
    assert page.count('<img class="saliency"') == 12 and 'id="saliency"' in page
    ece = float(re.search(r"Expected calibration error \(ECE\) on TEST: <b>([\d.]+)</b>", page)[1])

    card = open(os.path.join(step, "model_card.md")).read()
    for section in SECTIONS:
        assert f"\n## {section}\n" in card
    for field in ('"epochs": 4', '"image_size": 32', "| TEST | 20 |", "| cats |", "| dogs |", "- model: ",
                  "- data: ", "- W&B run: ", f"ECE, 10 bins) on TEST: {ece:.4f}", f"{len(rows)} of the 20 TEST",
                  "first frame"):
        assert field in card, field


def _marked_images(root: str, per_class: int = 40) -> None:
    """Noise for both classes; every dog has a white square in its top-left corner (1/16 of the area): the
    only thing that tells the classes apart."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        os.makedirs(os.path.join(root, label))
        for i in range(per_class):
            pixels = rng.integers(0, 128, (64, 64, 3), dtype=np.uint8)
            if label == "dogs":
                pixels[:16, :16] = 255
            Image.fromarray(pixels).save(os.path.join(root, label, f"{label}.{i:05d}.png"))


@pytest.mark.slow
def test_saliency_of_a_model_that_learned_a_planted_marker_lies_on_the_marker(tmp_path):
    from components.convert.pipeline import convert
    from components.evaluate.core import evaluate
    from components.evaluate.saliency import integrated_gradients
    from components.model_store import load_saved_model
    from components.prepare import prepare_csv
    from components.train.config import TrainConfig
    from components.train.core import train
    from components.train.data import make_dataset

    _marked_images(str(tmp_path / "images"))
    prepare_csv(str(tmp_path / "images"), str(tmp_path / "images.csv"), train_fraction=0.6, validation_fraction=0.2)
    convert(str(tmp_path / "images.csv"), str(tmp_path / "records"))
    records, model_dir = str(tmp_path / "records"), str(tmp_path / "model")
    train(records, model_dir, TrainConfig(epochs=4, image_size=32, batch_size=8))
    result = evaluate(model_dir, records, saliency_images=3)
    assert result.accuracy >= 0.9, "the model did not learn the marker; the test cannot judge its saliency"
    assert result.saliency["images"] == 3 and result.saliency["seconds"] >= 0
    assert [bool(e.saliency) for e in result.gallery[:4]] == [True, True, True, False]

    pixels, labels = next(iter(make_dataset(records, "TEST", 32, 64, cache="none")))
    dogs = pixels.numpy()[labels.numpy() == 1]
    loaded = load_saved_model(model_dir)  # held: the signature needs the loaded object's variables alive
    maps = integrated_gradients(loaded.signatures["predict_pixels"], dogs, np.ones(len(dogs), dtype=np.int64))
    on_marker = maps[:, :8, :8].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert np.median(on_marker) > 0.3, on_marker  # 1/16 of the pixels hold ~0.61 of the attribution (measured)
