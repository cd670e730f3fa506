import os
import re
import shutil
import subprocess
import sys

import pytest

from pipelines.cli import build_parser, main

COMMANDS = ["sample-data", "prepare", "convert", "inspect", "train", "serve", "predict", "run", "compile"]


def test_top_level_help_lists_every_command():
    text = build_parser().format_help()
    for command in COMMANDS:
        assert command in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: catsdogs " + command in capsys.readouterr().out


def test_the_installed_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "sample-data", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--per-class" in result.stdout


def test_sample_data_cli_writes_the_images(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path), "--per-class", "3", "--classes", "a,b,c"]) == 0
    assert "wrote 9 images for 3 classes" in capsys.readouterr().out
    assert len(list(tmp_path.rglob("*.jpg"))) == 9


def test_beam_arguments_are_only_for_convert(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path), "--", "--project", "p"]) == 2
    assert "only for `catsdogs convert`" in capsys.readouterr().err


def test_convert_cli_reports_counts(tmp_path, sample_images, capsys):
    assert main(["prepare", sample_images, "--output", str(tmp_path / "i.csv")]) == 0
    assert main(["convert", str(tmp_path / "i.csv"), "--output-dir", str(tmp_path / "out")]) == 0
    assert "40 of 40 rows written" in capsys.readouterr().out


def test_dataflow_without_project_is_refused_before_submitting():
    from components.beam_runner import dataflow_args
    from components.errors import InputError

    with pytest.raises(InputError, match="project, temp_location"):
        dataflow_args(project="", region="us-central1", temp_location="")
    assert dataflow_args("p", "r", "gs://b/tmp", max_workers=4) == [
        "--project=p", "--region=r", "--temp_location=gs://b/tmp", "--max_num_workers=4"
    ]


# TensorFlow's C++ logging and its start-up lines (issue 29): none of these may reach a person unless --verbose.
TF_LOG_LINE = re.compile(r"^[IWEF]0000 |absl::InitializeLog|cuInit|oneDNN", re.MULTILINE)
CATSDOGS = [sys.executable, "-m", "pipelines.cli"]


def test_help_says_once_where_the_library_lines_go():
    text = subprocess.run([*CATSDOGS, "--help"], capture_output=True, text=True, check=True).stdout
    assert re.sub(r"\s+", " ", text).count("~/.local/state/catsdogs/") == 1
    assert "--verbose" in text


def test_a_command_shows_only_its_own_lines_and_keeps_tensorflows_in_its_log(records, tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    quiet = subprocess.run([*CATSDOGS, "inspect", records], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "records: TRAIN" in quiet.stdout
    assert not TF_LOG_LINE.search(quiet.stdout + quiet.stderr), quiet.stdout + quiet.stderr
    kept = (tmp_path / "state" / "catsdogs" / "inspect.log").read_text()
    assert TF_LOG_LINE.search(kept)  # TensorFlow did print them; they went to the log
    verbose = subprocess.run([*CATSDOGS, "-v", "inspect", records], capture_output=True, text=True, env=env)
    assert verbose.returncode == 0 and TF_LOG_LINE.search(verbose.stdout + verbose.stderr)


def test_a_tensorflow_error_still_reaches_the_person_in_one_line(records, tmp_path):
    damaged = tmp_path / "tfrecords"
    shutil.copytree(records, damaged)
    shard = next(damaged.glob("train-*"))
    shard.write_bytes(shard.read_bytes()[:100])  # a real op failure: TFRecordReader's DataLossError
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    result = subprocess.run([*CATSDOGS, "inspect", str(damaged)], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("catsdogs inspect: error: TensorFlow DataLossError: ") and "truncated" in lines[0]
    assert str(tmp_path / "state" / "catsdogs" / "inspect.log") in lines[0]


def test_the_devices_line_names_tensorflows_devices_and_the_strategy():
    from components.train.distribute import devices_line

    assert devices_line("MirroredStrategy", 4) == "training on 4 GPUs (MirroredStrategy)"
    assert devices_line("OneDeviceStrategy", 1) == "training on 1 GPU (OneDeviceStrategy)"
    assert devices_line("_DefaultDistributionStrategy", 0) == "training on the CPU (no GPU found)"
    assert (devices_line("MultiWorkerMirroredStrategy", 2, workers=3)
            == "training on 3 nodes, each on 2 GPUs (MultiWorkerMirroredStrategy)")


@pytest.mark.slow
def test_train_says_where_it_trains_and_nothing_of_tensorflows(records, tmp_path):
    result = subprocess.run([*CATSDOGS, "train", "--data", records, "--model-dir", str(tmp_path / "model"),
                             "--epochs", "1", "--image-size", "32"], capture_output=True, text=True,
                            env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert shown.count("training on the CPU (no GPU found)") == 1  # this machine has no GPU
    assert not TF_LOG_LINE.search(shown) and "UserWarning" not in shown, shown


def _laptop(tmp_path) -> dict[str, str]:
    """A subprocess environment without any Google credentials: no key file, and no metadata server answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    return {**env, "HOME": str(tmp_path / "home"), "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}


def test_dry_runs_on_gs_paths_need_no_credentials_and_other_commands_say_how_to_log_in(tmp_path, sample_images):
    dataflow = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west4",
                "--temp-location", "gs://b/tmp", "--dry-run"]
    convert = subprocess.run([*CATSDOGS, "convert", "gs://b/images.csv", "--output-dir", "gs://b/tfrecords",
                              *dataflow], capture_output=True, text=True, env=_laptop(tmp_path))
    assert convert.returncode == 0, convert.stderr
    assert convert.stdout.count("job graph: ") == 1
    predict = subprocess.run([*CATSDOGS, "predict", os.path.join(sample_images, "cats", "cats.00001.jpg"),
                              "--endpoint", "projects/p/locations/europe-west4/endpoints/1"],
                             capture_output=True, text=True, env=_laptop(tmp_path))
    assert predict.returncode == 2
    assert predict.stderr.strip().splitlines() == [
        "catsdogs predict: error: no Google Cloud credentials: run `gcloud auth application-default login` or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service account key file"]


def test_the_demo_predictions_are_of_held_out_images_only():
    from components.prepare.core import Row as ImageRow
    from pipelines.cli import demo_images

    rows = [ImageRow("TRAIN", f"train-{label}.jpg", label) for label in "ab"]
    assert demo_images(rows) == []
    rows += [ImageRow("VALIDATION", "v-a.jpg", "a"), ImageRow("TEST", "t-b.jpg", "b")]
    assert sorted(demo_images(rows)) == ["t-b.jpg", "v-a.jpg"]


def test_a_dry_run_request_shows_images_shortened():
    from pipelines.cli import _shortened

    request = {"request": {"instances": [{"b64": "A" * 1000}, {"b64": "short"}]}}
    assert _shortened(request) == {"request": {"instances": [{"b64": "A" * 40 + "... (1000 characters)"},
                                                             {"b64": "short"}]}}


def test_the_upload_hint_names_only_this_runs_offline_runs(tmp_path):
    from pipelines.cli import _wandb_summary

    runs = (str(tmp_path / "wandb" / "offline-run-1"), str(tmp_path / "wandb" / "offline-run-2"))
    hint = _wandb_summary(runs)
    assert hint.endswith(f"wandb sync {runs[0]} {runs[1]}") and "*" not in hint


def test_prepare_says_its_counts_once(sample_images, tmp_path):
    result = subprocess.run([*CATSDOGS, "prepare", sample_images, "--output", str(tmp_path / "images.csv")],
                            capture_output=True, text=True, env={**os.environ, "XDG_STATE_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert shown.count("rows to ") == 1 and "TRAIN " in shown, shown
