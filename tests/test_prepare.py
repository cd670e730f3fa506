import csv
import shutil

import pytest

from components.errors import InputError
from components.prepare.core import hash_split, prepare_csv, scan_images
from components.sample_data import generate_sample
from pipelines.cli import main


def test_csv_has_tfrecorder_columns_and_every_image(tmp_path, sample_images):
    counts = prepare_csv(sample_images, str(tmp_path / "images.csv"))
    with open(tmp_path / "images.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["split", "image_uri", "label"]
    assert len(rows) - 1 == 40 == sum(counts.values())
    assert {r[0] for r in rows[1:]} <= {"TRAIN", "VALIDATION", "TEST"}
    assert {r[2] for r in rows[1:]} == {"cats", "dogs"}
    assert all(r[1].startswith(sample_images) and r[1].endswith(".jpg") for r in rows[1:])


def test_adding_images_never_moves_existing_ones_to_another_split(tmp_path):
    generate_sample(str(tmp_path / "images"), per_class=30)
    before = {r.image_uri: r.split for r in scan_images(str(tmp_path / "images"))}
    generate_sample(str(tmp_path / "more"), per_class=60, seed=5)
    for path in (tmp_path / "more" / "cats").glob("*.jpg"):
        shutil.copy(path, tmp_path / "images" / "cats" / f"new-{path.name}")
    after = {r.image_uri: r.split for r in scan_images(str(tmp_path / "images"))}
    assert len(after) == len(before) + 60
    assert {uri: after[uri] for uri in before} == before


def test_hash_split_follows_the_fractions():
    splits = [hash_split(f"cats/{i}.jpg", 0.8, 0.1) for i in range(5000)]
    assert 0.77 < splits.count("TRAIN") / 5000 < 0.83
    assert 0.08 < splits.count("VALIDATION") / 5000 < 0.12
    assert hash_split("cats/1.jpg", 0.8, 0.1) == hash_split("cats/1.jpg", 0.8, 0.1)


def test_split_folders_set_the_split(tmp_path):
    generate_sample(str(tmp_path), per_class=5, layout="split")
    rows = scan_images(str(tmp_path))
    assert {(r.split, r.label) for r in rows} == {(s, c) for s in ("TRAIN", "VALIDATION") for c in ("cats", "dogs")}
    assert all(f"/{r.split.lower()}/{r.label}/" in r.image_uri for r in rows)


def test_file_names_with_commas_and_quotes_round_trip(tmp_path):
    generate_sample(str(tmp_path / "images"), per_class=2)
    odd = tmp_path / "images" / "cats" / 'a, "quoted" name.jpg'
    shutil.copy(next((tmp_path / "images" / "cats").glob("*.jpg")), odd)
    prepare_csv(str(tmp_path / "images"), str(tmp_path / "images.csv"))
    with open(tmp_path / "images.csv", newline="") as f:
        uris = [row["image_uri"] for row in csv.DictReader(f)]
    assert str(odd) in uris


def test_non_image_files_are_ignored(tmp_path):
    generate_sample(str(tmp_path), per_class=2)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "cats" / ".DS_Store.jpg").write_text("hidden")
    assert len(scan_images(str(tmp_path))) == 4


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no images under"),
        (lambda root: generate_sample(str(root), per_class=2) and shutil.rmtree(root / "dogs"), "at least two"),
        (lambda root: generate_sample(str(root / "deep" / "er"), per_class=1), "folder"),
    ],
    ids=["missing", "empty", "one-label", "too-deep"],
)
def test_bad_image_roots_are_refused_with_the_reason(tmp_path, setup, message):
    root = tmp_path / "images"
    setup(root)
    with pytest.raises(InputError, match=message):
        scan_images(str(root))


def test_cli_exits_non_zero_with_a_clear_message_for_an_empty_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "--output", str(tmp_path / "x.csv")]) == 2
    assert "no images under" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_cli_refuses_a_missing_root_for_run(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w")]) == 2
    assert "does not exist" in capsys.readouterr().err
