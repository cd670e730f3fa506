"""The whole local DAG through kfp.local, as a user runs it: `catsdogs run`."""

import glob
import os

import pytest

from components.sample_data import generate_sample
from pipelines.cli import main

pytestmark = pytest.mark.slow
FAST = ["--per-class", "12", "--epochs", "1", "--image-size", "32", "--batch-size", "8"]


def test_run_deploys_a_new_version_each_time_and_predicts_from_it(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    assert main(["run", "--workdir", workdir, *FAST]) == 0
    out = capsys.readouterr().out
    assert os.path.isfile(os.path.join(workdir, "models", "catsdogs", "1", "saved_model.pb"))
    assert "held-out accuracy:" in out and "deployed version 1" in out
    predictions = out.split("predictions from", 1)[1].splitlines()[1:]
    assert len(predictions) == 4  # two images per class
    assert {line.rsplit(": ", 1)[1].split()[0] for line in predictions} <= {"cats", "dogs"}
    assert {"cats", "dogs"} == {os.path.basename(os.path.dirname(line.split(": ")[0].strip())) for line in predictions}

    reports = glob.glob(os.path.join(workdir, "pipeline_root", "*", "evaluate", "report"))
    assert len(reports) == 1 and "<svg" in open(reports[0]).read()
    metrics = glob.glob(os.path.join(workdir, "pipeline_root", "*", "evaluate", "executor_output.json"))
    assert '"accuracy"' in open(metrics[0]).read()

    assert main(["run", "--workdir", workdir, *FAST]) == 0
    assert "deployed version 2" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(workdir, "models", "catsdogs"))) == ["1", "2"]


def test_run_on_a_split_folder_with_an_unreachable_gate_does_not_deploy(tmp_path, capsys):
    generate_sample(str(tmp_path / "images"), per_class=12, layout="split", classes=("ants", "bees", "wasps"))
    workdir = str(tmp_path / "w")
    code = main(["run", str(tmp_path / "images"), "--workdir", workdir, *FAST, "--min-accuracy", "1.01"])
    out = capsys.readouterr().out
    assert code == 0
    assert "not deployed" in out
    assert not os.path.exists(os.path.join(workdir, "models", "catsdogs"))
