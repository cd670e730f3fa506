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
