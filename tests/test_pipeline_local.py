"""The whole local DAG through kfp.local, as a user runs it: `catsdogs run`."""

import glob
import os
import re
import subprocess
import sys

import pytest

from components.evaluate.core import GALLERY_SIZE
from components.prepare.core import scan_images
from components.sample_data import generate_sample
from pipelines.cli import main
from tests.conftest import DEPLOYS

pytestmark = pytest.mark.slow


def test_run_deploys_a_new_version_each_time_and_predicts_from_it(tmp_path, capsys):
    workdir = str(tmp_path / "w")
    assert main(["run", "--workdir", workdir, *DEPLOYS]) == 0
    out = capsys.readouterr().out
    assert os.path.isfile(os.path.join(workdir, "models", "catsdogs", "1", "saved_model.pb"))
    assert re.search(r"^held-out accuracy +[01]\.\d{4} on \d+ TEST images", out, re.M)
    assert re.search(r"^deployed +version 1 at ", out, re.M)
    predictions = out.split("predictions from", 1)[1].splitlines()[1:]
    assert 1 <= len(predictions) <= 4  # at most two images per class
    assert {line.rsplit(": ", 1)[1].split()[0] for line in predictions} <= {"cats", "dogs"}
    rows = scan_images(os.path.join(workdir, "sample"))
    held_out = {os.path.abspath(r.image_uri) for r in rows if r.split != "TRAIN"}
    assert {os.path.abspath(line.split(": ")[0].strip()) for line in predictions} <= held_out  # never TRAIN images

    reports = glob.glob(os.path.join(workdir, "pipeline_root", "*", "evaluate", "report"))
    assert len(reports) == 1 and "<svg" in open(reports[0]).read()
    run_name = reports[0].split(os.sep)[-3]
    copy = os.path.join(workdir, "reports", run_name, "report.html")
    assert open(copy).read() == open(reports[0]).read() and re.search(r"^report +\S+report\.html$", out, re.M)
    metrics = glob.glob(os.path.join(workdir, "pipeline_root", "*", "evaluate", "executor_output.json"))
    assert '"accuracy"' in open(metrics[0]).read()

    assert main(["run", "--workdir", workdir, *DEPLOYS]) == 0
    assert re.search(r"^deployed +version 2 at ", capsys.readouterr().out, re.M)
    assert sorted(os.listdir(os.path.join(workdir, "models", "catsdogs"))) == ["1", "2"]


def test_run_on_a_split_folder_with_an_unreachable_gate_does_not_deploy(tmp_path, capsys):
    generate_sample(str(tmp_path / "images"), per_class=12, layout="split", classes=("ants", "bees", "wasps"))
    workdir = str(tmp_path / "w")
    code = main(["run", str(tmp_path / "images"), "--workdir", workdir, *DEPLOYS, "--min-accuracy", "1.01"])
    out = capsys.readouterr().out
    assert code == 0
    assert "not deployed" in out
    assert not os.path.exists(os.path.join(workdir, "models", "catsdogs"))


# What kfp.local, TensorFlow, CUDA, absl and W&B print when left to themselves (a run printed 826 such lines).
NOISE = re.compile(r"absl|cuInit|cuda|oneDNN|^[IWE]0000|Executing task|executor_input|KFP Executor|wandb:|"
                   r"Traceback|Warning|WARNING|^\s*[{}\]]", re.I | re.M)
STEPS = ("wandb-settings", "prepare", "convert", "validate", "train", "evaluate", "check-serving", "deploy-local")


def test_run_prints_a_short_readable_account_and_keeps_every_step_log(tmp_path):
    # As a person runs it: a fresh process, its stdout and stderr together, as on a terminal.
    workdir = tmp_path / "w"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--workdir", str(workdir), "--per-class", "40", "--epochs",
         "2", "--image-size", "64", "--batch-size", "8"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=900)
    out = done.stdout
    assert done.returncode == 0, out
    lines = out.splitlines()
    assert len(lines) <= 40, out
    assert re.search(r"^label issues +\d+ in \S+label_issues\.csv$", out, re.M), out
    assert not NOISE.search(out), NOISE.search(out).group(0) + "\n" + out
    for step in STEPS:  # one line per step, with what it did
        assert re.search(rf"^  {re.escape(step)} +\d+\.\ds  \S", out, re.M), out
    assert re.search(r"^  train .*epoch 2/2: loss \d\.\d{3}, accuracy \d\.\d{3}", out, re.M), out
    assert re.search(r"^  prepare .* 80 images found", out, re.M), out
    assert re.search(r"^  validate .*80 images, 0 pairs across splits, 0 conflicting", out, re.M), out

    report = re.search(r"^report +(\S+\.html)$", out, re.M).group(1)
    page = open(os.path.join(tmp_path, report)).read()
    gallery = page.split('id="gallery">', 1)[1].split("</div>", 1)[0]  # not the saliency or label-issue images
    assert 4 <= gallery.count("<figure") <= GALLERY_SIZE
    assert re.search(r"^serve it +catsdogs serve \S+ --port 8080$", out, re.M)

    logs = workdir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == sorted([f"{s}.log" for s in STEPS] + ["run.log"])
    for step in STEPS:
        text = (logs / f"{step}.log").read_text()
        assert f"Executing task '{step}'" in text and "finished with status SUCCESS" in text
    assert "epoch" in (logs / "train.log").read_text().lower()


def test_a_failing_step_shows_the_end_of_its_log_and_where_the_log_is(tmp_path, capsys):
    # Files named like images pass the CLI's and prepare's checks; conversion finds half of them unreadable.
    images = tmp_path / "images"
    generate_sample(str(images), per_class=12)
    for path in (images / "dogs").iterdir():
        path.write_text("not an image")
    workdir = tmp_path / "w"
    code = main(["run", str(images), "--workdir", str(workdir), "--epochs", "1", "--image-size", "32"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"^  convert .*FAILED", out, re.M)
    assert "InputError" in out and "--max-error-fraction" in out  # the log's last lines
    log = workdir / "logs" / "convert.log"
    assert str(log) in out and "InputError" in log.read_text()
    assert not (workdir / "models").exists()
    assert len(out.splitlines()) <= 40


@pytest.mark.slow
def test_a_worse_candidate_is_not_deployed_and_the_run_still_succeeds(tmp_path, capsys):
    """Issue 16's three runs into one workdir: good (version 1), bad (kept out, exit 0), good again (version 2)."""
    workdir = str(tmp_path / "w")
    good = ["--per-class", "60", "--epochs", "5", "--image-size", "64", "--wandb-mode", "disabled"]
    versions = os.path.join(workdir, "models", "catsdogs")

    assert main(["run", "--workdir", workdir, *good]) == 0
    assert sorted(os.listdir(versions)) == ["1"]
    first = float(re.search(r"^held-out accuracy +([\d.]+)", capsys.readouterr().out, re.M).group(1))

    bad = ["--per-class", "60", "--epochs", "1", "--learning-rate", "1e-7", "--image-size", "64",
           "--wandb-mode", "disabled"]
    assert main(["run", "--workdir", workdir, *bad]) == 0  # a rejection is a result, not a failure
    out = capsys.readouterr().out
    line = re.search(r"^not deployed: (.*)$", out, re.M).group(1)
    candidate = float(re.search(r"^held-out accuracy +([\d.]+)", out, re.M).group(1))
    assert candidate < first
    assert "version 1 stays deployed" in line  # why: no better than a constant guess, or worse than version 1
    assert "no better than always answering" in line or (f"{candidate:.4f}" in line and f"{first:.4f}" in line)
    assert sorted(os.listdir(versions)) == ["1"]

    assert main(["run", "--workdir", workdir, *good]) == 0
    assert sorted(os.listdir(versions)) == ["1", "2"]
