"""`catsdogs export`: TFLite and ONNX files that answer as the SavedModel does, measured, and run without TensorFlow.

Every test goes through the command as a user runs it (a subprocess), on the session's small trained model; the
exported files are then run in a clean interpreter with only their runtime.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from components.export.core import MANIFEST, MIN_AGREEMENT
from pipelines.cli import main
from tests.conftest import DEPLOYS, IMAGE_SIZE

EXPORTS = [("onnx", "none"), ("tflite", "none"), ("tflite", "fp16"), ("tflite", "int8")]

FRAGILE_ARCHITECTURE = '''
import keras


def fragile(image_size, num_classes):
    """Answers by a difference float16 cannot hold: 1.0001 * red - 1.0 * red (1.0001 is 1.0 in float16), scaled
    by 1000 into the sigmoid. Every weight is fixed, so training leaves them as they are."""
    inputs = keras.Input((image_size, image_size, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    fixed = dict(use_bias=False, trainable=False)
    a = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant([[1.0001], [0.0], [0.0]]), **fixed)(mean)
    b = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant([[1.0], [0.0], [0.0]]), **fixed)(mean)
    head = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(1000.0),
                              trainable=False)
    return keras.Model(inputs, head(keras.layers.Subtract()([a, b])))
'''


def catsdogs(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def exported(trained_model, records, tmp_path_factory) -> dict:
    """Each format and quantization exported once by the command into one folder: {(format, quantize): run}."""
    out = tmp_path_factory.mktemp("exports")
    runs = {}
    for fmt, quantize in EXPORTS:
        runs[fmt, quantize] = catsdogs("export", trained_model, "--format", fmt, "--quantize", quantize,
                                       "--data", records, "--output-dir", str(out))
    return {"dir": out, "runs": runs, "model": trained_model}


@pytest.mark.parametrize("fmt, quantize", EXPORTS)
def test_each_export_passes_its_parity_bar_and_is_described(fmt, quantize, exported, records):
    run = exported["runs"][fmt, quantize]
    assert run.returncode == 0, run.stderr[-3000:]
    name = {"none": f"model.{fmt}"}.get(quantize, f"model-{quantize}.{fmt}")
    path = exported["dir"] / name
    entry = json.loads((exported["dir"] / MANIFEST).read_text())["exports"][name]
    # the bar, and the numbers behind it
    assert entry["agreement"] >= MIN_AGREEMENT[quantize] and entry["examples"] > 0 and entry["split"] == "TEST"
    assert abs(entry["accuracy"] - entry["savedmodel_accuracy"] - entry["accuracy_difference"]) < 1e-9
    assert 0 <= entry["max_probability_difference"] < (0.2 if quantize == "int8" else 0.01)
    assert entry["latency_ms_p50"] > 0 and entry["savedmodel_latency_ms_p50"] > 0
    # the manifest: format, input, classes, size
    assert (entry["format"], entry["quantize"], entry["size_bytes"]) == (fmt, quantize, path.stat().st_size)
    assert entry["input"]["shape"] == [-1, IMAGE_SIZE, IMAGE_SIZE, 3] and entry["input"]["range"] == [0, 255]
    assert entry["classes"] == json.loads(open(os.path.join(records, "labels.json")).read())
    # the served model's decision rule travels with the file: the threshold training chose, as the SavedModel has it
    threshold = json.loads(open(os.path.join(exported["model"], "training.json")).read())["calibration"]["threshold"]
    assert entry["output"]["threshold"] == pytest.approx(threshold, abs=1e-6)
    assert entry["output"]["decision"] == ("the likeliest class" if not threshold else
                                           f"{entry['classes'][1]} when its probability >= threshold, else "
                                           f"{entry['classes'][0]}")
    # the printed table: the SavedModel's row and this export's
    assert "SavedModel" in run.stdout and name in run.stdout and f"{entry['agreement']:.2%}" in run.stdout


def test_the_files_shrink_with_quantization(exported):
    entries = json.loads((exported["dir"] / MANIFEST).read_text())["exports"]
    sizes = {name: entry["size_bytes"] for name, entry in entries.items()}
    assert sizes["model-int8.tflite"] < sizes["model-fp16.tflite"] < sizes["model.tflite"]


def pixels_batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (5, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


RUN_ALONE = {
    "onnx": """
        import onnxruntime
        session = onnxruntime.InferenceSession(path)
        assert [i.name for i in session.get_inputs()] == ["pixels"], session.get_inputs()
        probabilities = session.run(["probabilities"], {"pixels": pixels})[0]
    """,
    "tflite": """
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(model_path=path).get_signature_runner()
        probabilities = np.concatenate([runner(pixels=p[None])["probabilities"] for p in pixels])
    """,
}


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_the_exported_file_runs_without_tensorflow(fmt, exported, trained_model, tmp_path):
    assert exported["runs"][fmt, "none"].returncode == 0
    np.save(tmp_path / "pixels.npy", pixels_batch())
    script = textwrap.dedent("""
        import sys, json
        import numpy as np
        path, pixels = sys.argv[1], np.load(sys.argv[2])
    """) + textwrap.dedent(RUN_ALONE[fmt]) + textwrap.dedent("""
        assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")], "TensorFlow was imported"
        print(json.dumps(probabilities.tolist()))
    """)
    done = subprocess.run([sys.executable, "-I", "-c", script, str(exported["dir"] / f"model.{fmt}"),
                           str(tmp_path / "pixels.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.array(json.loads(done.stdout.strip().splitlines()[-1]))

    import tensorflow as tf

    expected = tf.saved_model.load(trained_model).signatures["predict_pixels"](
        pixels=tf.constant(pixels_batch()))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_an_export_that_would_change_the_answers_is_refused(records, tmp_path):
    """A model whose answers hang on a weight float16 rounds away: its fp32 TFLite passes, its fp16 one is refused,
    and the refusal leaves the folder as the good export left it."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "fragile.py").write_text(FRAGILE_ARCHITECTURE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")])}
    model = str(tmp_path / "model")
    trained = catsdogs("train", "--data", records, "--model-dir", model, "--architecture", "fragile:fragile",
                       "--epochs", "1", "--image-size", str(IMAGE_SIZE), env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "out"
    good = catsdogs("export", model, "--format", "tflite", "--output-dir", str(out))  # --data: from training.json
    assert good.returncode == 0, good.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    refused = catsdogs("export", model, "--format", "tflite", "--quantize", "fp16", "--data", records,
                       "--output-dir", str(out))
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("catsdogs export: error: ")]
    assert len(errors) == 1 and refused.stderr.strip().splitlines()[-1] == errors[0], refused.stderr[-3000:]
    assert "agrees with the SavedModel on 0.0%" in errors[0] and "99.5% bar" in errors[0] and "refused" in errors[0]
    assert "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("argv, named", [
    (["--format", "onnx", "--quantize", "int8"], "quantize 'int8' is not available for onnx"),
    (["--format", "tflite", "--quantize", "int4"], "--quantize: invalid choice: 'int4'"),
    (["--format", "coreml"], "--format: invalid choice: 'coreml'"),
])
def test_a_bad_format_or_quantization_is_one_error_line(argv, named, tmp_path, capsys):
    try:
        code = main(["export", str(tmp_path), "--data", str(tmp_path), *argv])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("catsdogs export: error: ") and named in lines[0], lines


def test_a_folder_without_a_savedmodel_is_one_error_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "onnx", "--data", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path} holds no saved_model.pb" in lines[0], lines
    assert not (tmp_path / "export").exists()


@pytest.fixture(scope="module")
def compiled_pipelines(tmp_path_factory) -> dict[str, dict]:
    import yaml

    folder = tmp_path_factory.mktemp("pipelines")
    assert main(["compile", "--output", str(folder / "vertex.yaml")]) == 0
    from kfp import compiler

    from pipelines.local import local_pipeline

    compiler.Compiler().compile(local_pipeline, str(folder / "local.yaml"))
    return {name: yaml.safe_load((folder / f"{name}.yaml").read_text()) for name in ("local", "vertex")}


@pytest.mark.parametrize("pipeline", ["local", "vertex"])
def test_both_pipelines_export_only_when_asked(pipeline, compiled_pipelines):
    compiled = compiled_pipelines[pipeline]
    assert compiled["root"]["inputDefinitions"]["parameters"]["export_formats"]["defaultValue"] == ""
    tasks = compiled["root"]["dag"]["tasks"]
    name = {task_id: task["taskInfo"]["name"] for task_id, task in tasks.items()}
    condition = next(task for task in tasks.values() if task["taskInfo"]["name"] == "export-formats")
    rule = condition["triggerPolicy"]["condition"]
    assert "export_formats" in rule and "!= ''" in rule, rule
    upstream = {name[t].split(" (")[0] for t in condition["dependentTasks"]}
    assert upstream >= {"train", "validate data"}  # the model, and the records validation handed on
    inner = compiled["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    (step,) = [task for task in inner.values() if task["taskInfo"]["name"] == "export (TFLite / ONNX)"]
    assert step["inputs"]["parameters"]["export_formats"] == {
        "componentInputParameter": "pipelinechannel--export_formats"}


@pytest.mark.slow
def test_run_with_export_formats_puts_the_exports_beside_the_version(tmp_path):
    """(DEPLOYS: a model that beats always answering one class, or nothing is published.)"""
    workdir = tmp_path / "w"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--workdir", str(workdir), *DEPLOYS,
         "--export-formats", "onnx,tflite", "--target-recall", "0.9"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout
    version = workdir / "models" / "catsdogs" / "1"
    entries = json.loads((version / "export" / MANIFEST).read_text())["exports"]
    assert set(entries) == {"model.onnx", "model.tflite"}  # float32: a 1-epoch model's borderline answers hold
    threshold = json.loads((version / "training.json").read_text())["calibration"]["threshold"]
    assert threshold > 0  # --target-recall: the exports say how the served model decides
    assert [e["output"]["threshold"] for e in entries.values()] == pytest.approx([threshold] * 2, abs=1e-6)
    assert {e["output"]["decision"] for e in entries.values()} == {"dogs when its probability >= threshold, else cats"}
    for name, entry in entries.items():
        assert (version / "export" / name).stat().st_size == entry["size_bytes"]
        assert entry["agreement"] >= entry["min_agreement"]
    assert "export" in (workdir / "logs" / "export.log").read_text()
    assert re.search(r"^  export +\d+\.\ds  model\.onnx [\d.]+ MB, \d+\.\d% agree, [\d.]+ ms; model\.tflite ",
                     done.stdout, re.M), done.stdout
    assert re.search(r"^exports +\S*models/catsdogs/1/export/ ", done.stdout, re.M), done.stdout


def test_without_data_recorded_the_command_asks_for_data(trained_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    info = json.loads((model / "training.json").read_text())
    assert info.pop("data") and True  # training records the data it trained on
    (model / "training.json").write_text(json.dumps(info))
    assert main(["export", str(model), "--format", "onnx"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pass --data TFRECORD_DIR" in lines[0], lines
    assert not (model / "export").exists()
