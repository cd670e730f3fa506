"""The serving check through `catsdogs check-serving`: the real server on a candidate, every documented request
format against the SavedModel's own answers, the figures against their limits, and a broken candidate refused."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import export_tiny_model

SHORT = ["--seconds", "0.5", "--concurrency", "2", "--sample", "3"]


def _catsdogs(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> str:
    """A folder of images of different sizes and formats (a colourful JPEG, a PNG, a wide JPEG)."""
    folder = tmp_path_factory.mktemp("held_out")
    rng = np.random.default_rng(0)
    for name, size, fmt in (("a.jpg", (40, 30), "JPEG"), ("b.png", (17, 23), "PNG"), ("c.jpg", (64, 20), "JPEG")):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
        Image.fromarray(pixels).save(folder / name, fmt)
    (folder / "notes.txt").write_text("not an image: skipped")
    return str(folder)


@pytest.fixture(scope="module")
def candidate(tmp_path_factory) -> str:
    return export_tiny_model(str(tmp_path_factory.mktemp("good") / "saved_model"), [0.02, -0.01, 0.005])


def broken_model(model_dir: str, image_size: int = 8) -> str:
    """A SavedModel whose serving path disagrees with its own serving_default: predict_pixels (what the server
    calls) answers the other class, as a mis-wired export would."""
    import tensorflow as tf

    from components.decode import decode_and_resize

    names = tf.constant(["cats", "dogs"])

    def answer(pixels, flip):
        p = tf.sigmoid(tf.reduce_mean(pixels, axis=[1, 2, 3])[:, tf.newaxis] / 64.0 - 2.0)
        p = 1.0 - p if flip else p
        probabilities = tf.concat([1.0 - p, p], axis=-1)
        return {"probabilities": probabilities, "labels": tf.gather(names, tf.argmax(probabilities, axis=-1)),
                "classes": tf.tile(names[tf.newaxis, :], [tf.shape(p)[0], 1])}

    class Broken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serving_default(self, image_bytes):
            pixels = tf.map_fn(lambda b: decode_and_resize(b, image_size), image_bytes,
                               fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
            return answer(pixels, flip=False)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")])
        def predict_pixels(self, pixels):
            return answer(tf.image.resize(pixels, [image_size, image_size]), flip=True)

        @tf.function(input_signature=[])
        def model_info(self):
            return {"image_size": tf.constant(image_size, tf.int32), "classes": names}

    module = Broken()
    tf.saved_model.save(module, model_dir, signatures={
        "serving_default": module.serving_default, "predict_pixels": module.predict_pixels,
        "model_info": module.model_info})
    Path(model_dir, "training.json").write_text(json.dumps({"class_names": ["cats", "dogs"], "history": {}}))
    return model_dir


def test_a_good_candidate_is_blessed_with_every_format_agreeing_and_its_figures(candidate, held_out, tmp_path):
    output = tmp_path / "check.json"
    result = _catsdogs("check-serving", candidate, "--images", held_out, "--output", str(output), *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("serving check blessed"), result.stdout
    check = json.loads(output.read_text())
    assert check["blessed"] and check["reasons"] == []
    assert check["images"] == 3  # the text file is not an image
    assert set(check["formats"]) == {"vertex_b64", "tf_serving_row", "tf_serving_column", "raw_pixels"}
    for fmt, compared in check["formats"].items():
        assert compared["labels_equal"] and compared["max_difference"] <= 1e-5, (fmt, compared)
        assert compared["requests"] == 3
    assert 0 < check["p50_ms"] <= check["p99_ms"]
    assert check["throughput"] > 0 and check["concurrency"] == 2 and check["errors"] == 0
    assert check["peak_memory_mb"] > 50  # TensorFlow alone is more than this: the server's own process was read


def test_a_candidate_whose_serving_path_disagrees_is_refused_in_one_line(held_out, tmp_path):
    model = broken_model(str(tmp_path / "broken"))
    result = _catsdogs("check-serving", model, "--images", held_out, *SHORT)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == ""
    # one line of ours (TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL: see /work/shared/README.md)
    ours = [line for line in result.stderr.splitlines() if line.startswith("catsdogs")]
    assert len(ours) == 1 and ours[0] == result.stderr.strip().splitlines()[-1]
    assert ours[0].startswith(f"catsdogs check-serving: error: {model}: serving check refused: ")
    check = json.loads((Path(model) / "serving_check.json").read_text())
    assert not check["blessed"]
    # the server answers from predict_pixels: its encoded-image answers are not serving_default's
    assert not check["formats"]["vertex_b64"]["labels_equal"]
    assert any(reason.startswith("vertex_b64:") for reason in check["reasons"])


def test_a_candidate_the_server_cannot_load_is_refused(held_out, tmp_path, diverged_model):
    result = _catsdogs("check-serving", diverged_model, "--images", held_out, "--output", str(tmp_path / "c.json"),
                       *SHORT)
    assert result.returncode == 2
    assert "serving check refused" in result.stderr
    check = json.loads((tmp_path / "c.json").read_text())
    assert not check["blessed"] and check["p99_ms"] is None


def test_a_limit_missed_refuses_and_names_it(candidate, held_out, tmp_path):
    result = _catsdogs("check-serving", candidate, "--images", held_out, "--output", str(tmp_path / "c.json"),
                       "--max-p99-ms", "0.001", "--min-throughput", "1000000", *SHORT)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "over max_p99_ms 0.001" in result.stderr and "under min_throughput 1e+06" in result.stderr
    check = json.loads((tmp_path / "c.json").read_text())
    assert all(f["labels_equal"] for f in check["formats"].values())  # it answers right, only too slowly


def test_bad_flags_are_one_line_errors(candidate, tmp_path):
    result = _catsdogs("check-serving", candidate, "--images", str(tmp_path), "--max-p99-ms", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("catsdogs check-serving: error: --max-p99-ms must be 0 "
                                                      "(no limit) or more, got -1.0")
    result = _catsdogs("check-serving", candidate, "--images", str(tmp_path))
    assert result.returncode == 2
    assert "no images to check serving with" in result.stderr


def test_images_come_from_a_csv_held_out_rows(tmp_path, held_out):
    from components.serve_check.core import sample_images

    csv = tmp_path / "images.csv"
    files = sorted(Path(held_out).glob("*.[jp][pn]g"))
    csv.write_text("split,image_uri,label\n" + f"TRAIN,{files[0]},cats\n" + f"TEST,{files[1]},dogs\n")
    images = sample_images(str(csv), 5)
    assert images == [files[1].read_bytes()]
    assert io.BytesIO(images[0]).getvalue()


def test_the_vertex_gate_needs_the_serving_check_run_in_the_serving_image(tmp_path):
    import yaml

    from tests.test_pipeline_vertex import REGISTRY, Dag, inside

    path = tmp_path / "pipeline.yaml"
    assert _catsdogs("compile", "--output", str(path), "--images-registry", REGISTRY,
                     "--images-tag", "t1").returncode == 0
    compiled = yaml.safe_load(path.read_text())
    dag = Dag(compiled)
    check = dag.tasks["check serving"]
    assert dag.depends_on("check serving") >= {"evaluate vs champion", "train (T4_1X x1)"}
    assert check["inputs"]["parameters"]["evaluation_blessed"]["taskOutputParameter"]["producerTask"] == \
        dag.ids["evaluate vs champion"]
    executor = compiled["deploymentSpec"]["executors"][compiled["components"][check["componentRef"]["name"]]
                                                         ["executorLabel"]]
    assert executor["container"]["image"] == f"{REGISTRY}/catsdogs-serving:t1"
    assert dag.condition("blessed") == "inputs.parameter_values['pipelinechannel--check-serving-Output'] == true"
    assert {"upload model version", "upload model", "deploy to endpoint"} <= inside(dag, "blessed")
    assert not {"upload model version", "upload model", "deploy to endpoint"} & inside(dag, "rejected")
    # A candidate the serving check refused is not uploaded even as a challenger: only one evaluation refused.
    challenger = {"upload challenger version (not deployed)", "import challenger evaluation (Model Registry)"}
    assert challenger <= inside(dag, "evaluation-refused") and "evaluation-refused" in inside(dag, "rejected")
    assert dag.condition("evaluation-refused") == \
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] == false"  # the evaluate task's
    for limit in ("max_p99_ms", "min_throughput", "max_memory_mb"):
        assert limit in compiled["root"]["inputDefinitions"]["parameters"]
        assert check["inputs"]["parameters"][limit]["componentInputParameter"] == limit


@pytest.mark.slow
def test_catsdogs_run_does_not_publish_what_the_serving_check_refuses(tmp_path):
    """(40 per class, 3 epochs: evaluation blesses the candidate, which a no-skill model it would not, so the
    serving check is what refuses it.)"""
    import os
    import re

    workdir = tmp_path / "w"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--workdir", str(workdir), "--per-class", "40", "--epochs",
         "3", "--image-size", "32", "--batch-size", "8", "--max-p99-ms", "0.001"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    out = done.stdout
    assert done.returncode == 0, out  # a refusal is a result, not a failure
    assert re.search(r"^  check-serving +\d+\.\ds  refused: .*over max_p99_ms 0\.001", out, re.M), out
    assert re.search(r"^serving check +refused: ", out, re.M), out
    assert re.search(r"^not deployed +the serving check refused it", out, re.M), out
    assert not (workdir / "models" / "catsdogs").exists()
    assert "deploy-local.log" not in os.listdir(workdir / "logs")


@pytest.mark.images
def test_check_serving_runs_in_the_serving_image(image, candidate, held_out, tmp_path):
    """`catsdogs check-serving` inside the serving image (as the DAG's step runs): a good candidate is blessed and
    the broken one refused, by the image's own server."""
    from tests.test_images import engine

    broken = broken_model(str(tmp_path / "broken"))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image runs as uid 1000
    for path in (candidate, held_out, broken):
        Path(path).chmod(0o755)
    mounts = ["-v", f"{candidate}:/m/good:ro", "-v", f"{broken}:/m/broken:ro", "-v", f"{held_out}:/images:ro",
              "-v", f"{out}:/out"]
    blessed = engine("run", "--rm", *mounts, "--entrypoint", "catsdogs", image("serving"), "check-serving",
                     "/m/good", "--images", "/images", "--output", "/out/good.json", *SHORT, check=False)
    assert blessed.returncode == 0, blessed.stderr[-3000:]
    assert blessed.stdout.startswith("serving check blessed"), blessed.stdout
    check = json.loads((out / "good.json").read_text())
    assert check["blessed"] and all(f["labels_equal"] for f in check["formats"].values())
    refused = engine("run", "--rm", *mounts, "--entrypoint", "catsdogs", image("serving"), "check-serving",
                     "/m/broken", "--images", "/images", "--output", "/out/broken.json", *SHORT, check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "catsdogs check-serving: error: /m/broken: serving check refused: " in refused.stderr
    assert not json.loads((out / "broken.json").read_text())["blessed"]
