import hashlib
import pathlib

import pytest
from PIL import Image

from components.errors import InputError
from components.sample_data import generate_sample


def _digests(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        generate_sample(str(tmp_path / name), per_class=3, seed=seed)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a").keys() == _digests(tmp_path / "c").keys()
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


def test_flat_layout_has_one_folder_per_class_of_jpegs_around_300x400(tmp_path):
    generate_sample(str(tmp_path), per_class=4, classes=("cats", "dogs", "birds"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["birds", "cats", "dogs"]
    for path in tmp_path.rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert 250 <= image.height <= 350 and 330 <= image.width <= 470


def test_split_layout_puts_a_fifth_of_each_class_in_validation(tmp_path):
    generate_sample(str(tmp_path), per_class=10, layout="split")
    assert len(list((tmp_path / "train" / "cats").glob("*.jpg"))) == 8
    assert len(list((tmp_path / "validation" / "dogs").glob("*.jpg"))) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [({"per_class": 0}, "per-class"), ({"classes": ("cats",)}, "two or more"),
     ({"classes": ("a", "a")}, "distinct"), ({"layout": "nested"}, "layout")],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        generate_sample(str(tmp_path), **kwargs)
