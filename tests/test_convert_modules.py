"""Convert's modules: the transforms declare their element types, so a wrongly wired graph fails when it is built
(before any image is read), and the per-image step is one function."""

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.typehints.decorators import TypeCheckError

from components.convert.transforms import CheckRows, Deduplicate, WriteErrors
from components.convert.writer import WriteShards, read_image

COLUMNS = {"split": 0, "image_uri": 1, "label": 2}


@pytest.mark.parametrize("transform", [
    CheckRows(COLUMNS, 3), Deduplicate(), WriteShards("unused", {"TRAIN": 1}, ["a", "b"], "jpeg", False),
    WriteErrors("unused")], ids=lambda t: type(t).__name__)
def test_a_transform_fed_the_wrong_elements_is_refused_when_the_graph_is_built(transform):
    pipeline = beam.Pipeline(runner=FnApiRunner())
    with pytest.raises(TypeCheckError, match=f"Input type hint violation at {type(transform).__name__}"):
        _ = pipeline | beam.Create([1, 2]) | transform


def test_read_image_gives_the_record_or_the_reason(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    good = read_image({"split": "TRAIN", "image_uri": str(tmp_path / "a.jpg"), "label": "b"}, {"a": 0, "b": 1}, "jpeg")
    bad = read_image({"split": "TRAIN", "image_uri": str(tmp_path / "b.jpg"), "label": "a"}, {"a": 0, "b": 1}, "jpeg")
    missing = read_image({"split": "TRAIN", "image_uri": str(tmp_path / "c.jpg"), "label": "a"}, {"a": 0}, "jpeg")
    assert not good.reason and good.example and (good.height, good.width) == (30, 40)
    assert bad.reason and not bad.example
    assert missing.reason.startswith("cannot read file")
