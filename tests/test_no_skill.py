"""A model no better than always answering the held-out split's largest class is never published (issue 21), and
min_accuracy has one default everywhere."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from components.evaluate.champion import MIN_ACCURACY, decide, majority, summary_line

CATSDOGS = os.path.join(os.path.dirname(sys.executable), "catsdogs")  # the installed command users run
NO_SKILL = re.compile(r'^not deployed: accuracy (\d\.\d{3}) is no better than always answering "(cats|dogs)" '
                      r"\((\d\.\d{3})\); (.*)$", re.M)


def test_the_largest_class_share_is_what_always_answering_it_scores():
    assert majority(["cats", "dogs"], [[2, 1], [0, 3]]) == ("cats", 0.5)  # a tie: the first class
    assert majority(["a", "b", "c"], [[1, 0, 0], [0, 2, 0], [1, 1, 5]]) == ("c", 0.7)


def test_an_accuracy_not_above_the_largest_share_is_never_published():
    rejected = decide(0.5, None, MIN_ACCURACY, majority=("cats", 0.5))
    assert not rejected.publish
    assert summary_line(rejected, None) == ('not deployed: accuracy 0.500 is no better than always answering "cats" '
                                            "(0.500); no version is deployed")
    assert not decide(0.9, 0.5, min_accuracy=0.0, max_regression=1.0, majority=("dogs", 0.9)).publish
    assert decide(0.6, None, MIN_ACCURACY, majority=("cats", 0.5)).publish
    below = decide(0.6, None, min_accuracy=0.7, majority=("cats", 0.5))  # min_accuracy still applies on top
    assert not below.publish and "below --min-accuracy 0.7" in below.reason


def test_min_accuracy_has_one_default_in_the_cli_and_both_pipelines():
    from pipelines.cli import build_parser
    from pipelines.local import local_pipeline
    from pipelines.vertex import build_vertex_pipeline

    parser = build_parser()
    for command in (["run", "--workdir", "w"], ["train", "--data", "d", "--model-dir", "m"]):
        assert parser.parse_args(command).min_accuracy == MIN_ACCURACY
    for pipeline in (local_pipeline, build_vertex_pipeline()):
        assert pipeline.component_spec.inputs["min_accuracy"].default == MIN_ACCURACY


@pytest.mark.slow
def test_run_publishes_nothing_that_learned_nothing_and_the_served_version_stays(trained_model, tmp_path):
    """The issue's command, with a version already served: a learning rate of 10000 leaves a model that gives
    every image the same answer."""
    workdir = tmp_path / "w"
    served = workdir / "models" / "catsdogs" / "1"
    shutil.copytree(trained_model, served)
    before = sorted((p.relative_to(served), p.read_bytes()) for p in served.rglob("*") if p.is_file())
    done = subprocess.run([CATSDOGS, "run", "--workdir", str(workdir), "--per-class", "30", "--epochs", "1",
                           "--image-size", "64", "--learning-rate", "10000", "--wandb-mode", "disabled"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    verdict = NO_SKILL.search(done.stdout)
    assert verdict, done.stdout
    accuracy, _, share, kept = verdict.groups()
    assert float(accuracy) <= float(share) and kept == "version 1 stays deployed"
    held_out = float(re.search(r"^held-out accuracy +([\d.]+)", done.stdout, re.M).group(1))
    assert f"{held_out:.3f}" == accuracy
    assert sorted(os.listdir(served.parent)) == ["1"]  # nothing published
    assert sorted((p.relative_to(served), p.read_bytes()) for p in served.rglob("*") if p.is_file()) == before


@pytest.mark.slow
def test_train_says_a_model_no_better_than_a_guess_is_not_deployable(records, tmp_path):
    done = subprocess.run([CATSDOGS, "train", "--data", records, "--model-dir", str(tmp_path / "m"), "--epochs", "1",
                           "--image-size", "32", "--learning-rate", "10000"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r'^not deployable: accuracy (\d\.\d{3}) is no better than always answering "(cats|dogs)" '
                     r"\((\d\.\d{3})\)$", done.stdout, re.M), done.stdout
