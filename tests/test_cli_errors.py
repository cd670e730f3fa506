"""Every misuse of the CLI is one line `catsdogs <cmd>: error: ...` naming the flag, path or line, and exit 2.

The sweeps read the parser, so a new command or flag is covered by being added: every numeric flag gets a value
that is not a number, every KEY=VALUE flag a pair without '='. The table below walks the paths of the wrong kind,
unreadable encodings, out-of-range numbers and busy ports command by command.
"""

import argparse
import os
import socket
import subprocess
import sys

import pytest

from pipelines.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def options(kind) -> list[tuple[str, str]]:
    """(command, flag) for every option of the given kind: a type (int, float) or the metavar 'KEY=VALUE'."""
    found = []
    for name, parser in subcommands().items():
        for action in parser._actions:
            if not action.option_strings:
                continue
            if action.type is kind or (kind == "KEY=VALUE" and action.metavar == "KEY=VALUE"):
                found.append((name, action.option_strings[-1]))
    return found


def one_error_line(capsys, command: str, *named: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{captured.err}"
    assert lines[0].startswith(f"catsdogs {command}: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    for text in named:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize("command, flag", options(int) + options(float), ids=lambda v: str(v))
def test_every_numeric_flag_refuses_a_non_number(command, flag, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, flag, "many"])
    assert exited.value.code == 2
    one_error_line(capsys, command, flag, "'many'")


@pytest.fixture
def paths(tmp_path, sample_images):
    """A file, a folder, a missing path, a CSV that is not UTF-8, and a real images folder."""
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "latin1.csv").write_bytes("split,image_uri,label\nTRAIN,/x/caf\xe9.jpg,chat\n".encode("latin-1"))
    return {"file": str(tmp_path / "file.txt"), "folder": str(tmp_path / "folder"),
            "missing": str(tmp_path / "missing"), "latin1": str(tmp_path / "latin1.csv"), "images": sample_images,
            "tmp": str(tmp_path)}


KEY_VALUE_COMMANDS = {  # the least each command needs to get as far as reading its KEY=VALUE flags
    "convert": ["convert", "{images}/../x.csv", "--output-dir", "{tmp}/out", "--runner", "DataflowRunner",
                "--project", "p", "--region", "r", "--temp-location", "gs://b/t", "--dry-run"],
    "batch-predict": ["batch-predict", "{images}", "--model", "{tmp}/m", "--output-dir", "{tmp}/out",
                      "--runner", "DataflowRunner", "--project", "p", "--region", "r", "--temp-location", "gs://b/t",
                      "--dry-run"],
    "submit": ["submit", "--project", "my-project", "--region", "r", "--pipeline-root", "gs://b/r", "--images", "gs://b/i",
               "--dry-run"],
    "schedule": ["schedule", "--cron", "0 3 * * 1", "--project", "my-project", "--region", "r", "--pipeline-root", "gs://b/r",
                 "--images", "gs://b/i", "--dry-run"],
}


@pytest.mark.parametrize("command, flag", options("KEY=VALUE"), ids=lambda v: str(v))
def test_every_key_value_flag_refuses_a_pair_without_equals(command, flag, paths, capsys):
    assert command in KEY_VALUE_COMMANDS, f"add {command} to KEY_VALUE_COMMANDS"
    argv = [a.format(**paths) for a in KEY_VALUE_COMMANDS[command]]
    assert main([*argv, flag, "novalue"]) == 2
    one_error_line(capsys, command, flag, "novalue", "KEY=VALUE")


MISUSES = [  # (argv with {placeholders}, text the error line must contain)
    # paths of the wrong kind, missing paths
    (["prepare", "{file}", "--output", "{tmp}/x.csv"], "{file}"),
    (["prepare", "{missing}", "--output", "{tmp}/x.csv"], "{missing}"),
    (["convert", "{folder}", "--output-dir", "{tmp}/out"], "{folder}"),
    (["convert", "{missing}", "--output-dir", "{tmp}/out"], "{missing}"),
    (["convert", "{latin1}", "--output-dir", "{tmp}/out"], "UTF-8"),
    (["inspect", "{file}"], "{file}"),
    (["inspect", "{missing}"], "{missing}"),
    (["train", "--data", "{file}", "--model-dir", "{tmp}/m"], "{file}"),
    (["train", "--data", "{missing}", "--model-dir", "{tmp}/m"], "{missing}"),
    (["serve", "{file}"], "{file}"),
    (["serve", "{missing}"], "{missing}"),
    (["predict", "{missing}", "--endpoint", "http://127.0.0.1:9"], "{missing}"),
    (["predict", "{folder}", "--endpoint", "http://127.0.0.1:9"], "{folder}"),
    (["batch-predict", "{missing}", "--model", "{folder}", "--output-dir", "{tmp}/out"], "{missing}"),
    (["run", "{file}", "--workdir", "{tmp}/w"], "{file}"),
    (["run", "--workdir", "{file}"], "{file}"),
    (["sample-data", "{file}", "--per-class", "1"], "{file}"),
    (["compile", "--output", "{folder}"], "{folder}"),
    # numbers out of range
    (["train", "--data", "{folder}", "--model-dir", "{tmp}/m", "--epochs", "0"], "--epochs"),
    (["train", "--data", "{folder}", "--model-dir", "{tmp}/m", "--image-size", "5000"], "--image-size"),
    (["run", "--workdir", "{tmp}/w", "--epochs", "0"], "--epochs"),
    (["run", "--workdir", "{tmp}/w", "--per-class", "0"], "--per-class"),
    (["sample-data", "{tmp}/s", "--per-class", "-1"], "--per-class"),
    (["prepare", "{images}", "--output", "{tmp}/x.csv", "--train-fraction", "1.5"], "fraction"),
    (["convert", "{latin1}", "--output-dir", "{tmp}/out", "--max-error-fraction", "2"], "--max-error-fraction"),
    (["serve", "{folder}", "--port", "70000"], "--port"),
    (["serve", "{folder}", "--max-batch", "0"], "--max-batch"),
    (["compile", "--replicas", "0"], "--replicas"),
    (["compile", "--machine", "K80_1X"], "K80_1X"),
    # an empty output folder would otherwise mean the working folder
    (["convert", "{images}/../x.csv", "--output-dir", ""], "--output-dir is empty"),
    (["batch-predict", "{images}", "--model", "{folder}", "--output-dir", " "], "--output-dir is empty"),
]


@pytest.mark.parametrize("argv, named", MISUSES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_each_misuse_is_one_error_line(argv, named, paths, capsys):
    argv = [a.format(**paths) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    one_error_line(capsys, argv[0], named.format(**paths))


def test_a_prefix_of_a_flag_is_not_taken_for_the_flag(capsys):
    # --model would otherwise be read as --model-dir (argparse's prefix matching): the old name of --architecture.
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", "d", "--model-dir", "m", "--model", "mobilenet_v3_small"])
    assert exited.value.code == 2
    one_error_line(capsys, "train", "--model")


def test_serve_on_a_busy_port_is_one_error_line(trained_model, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", trained_model, "--port", str(port), "--poll-seconds", "0"]) == 2
    one_error_line(capsys, "serve", str(port))


def test_serve_with_a_bad_aip_http_port_is_one_error_line(trained_model, capsys, monkeypatch):
    monkeypatch.setenv("AIP_HTTP_PORT", "abc")
    assert main(["serve", trained_model, "--poll-seconds", "0"]) == 2
    one_error_line(capsys, "serve", "AIP_HTTP_PORT", "abc")


def test_the_sweeps_reach_every_command():
    # A new command is covered by the numeric sweep when it has numeric flags; this keeps the sweeps honest.
    swept = {command for command, _ in options(int) + options(float)}
    assert {"sample-data", "prepare", "convert", "train", "serve", "run", "compile", "batch-predict"} <= swept
    assert os.path.basename(__file__) == "test_cli_errors.py"


# --- dry runs of the Vertex commands, run as users run them: the command in a subprocess -------------------------

CATSDOGS = os.path.join(os.path.dirname(sys.executable), "catsdogs")
VERTEX = ["--project", "my-project", "--pipeline-root", "gs://b/root", "--images", "gs://b/images", "--dry-run"]


@pytest.mark.parametrize("argv, named", [
    (["submit", "--region", "europe-west99", *VERTEX], ["--region 'europe-west99' is not a Vertex AI region",
                                                         "europe-west4"]),
    (["schedule", "--cron", "0 3 * * 1", "--region", "europe-west99", *VERTEX], ["--region 'europe-west99'"]),
    (["schedule", "--list", "--region", "mars-north1", "--project", "my-project", "--dry-run"],
     ["--region 'mars-north1'", "us-central1"]),
    (["submit", "--region", "europe-west4", *VERTEX, "--param", "min_accuracy=nan"],
     ["--param min_accuracy=nan: expected a finite number"]),
    (["submit", "--region", "europe-west4", *VERTEX, "--param", "learning_rate=inf"], ["learning_rate=inf"]),
    (["schedule", "--cron", "every day at three am", "--region", "europe-west4", *VERTEX],
     ["'every day at three am' is not a cron expression"]),
    (["schedule", "--cron", "99 99 * * *", "--region", "europe-west4", *VERTEX],
     ["'99 99 * * *' is not a cron expression"]),
    (["schedule", "--cron", "0 3 * * 1 2026", "--region", "europe-west4", *VERTEX], ["five fields"]),
    (["schedule", "--cron", "CRON_TZ=Mars/Olympus 0 3 * * 1", "--region", "europe-west4", *VERTEX],
     ["'Mars/Olympus' is not a time zone"]),
], ids=["submit-region", "schedule-region", "list-region", "nan", "inf", "cron-words", "cron-ranges",
        "cron-six-fields", "cron-zone"])
def test_vertex_dry_runs_refuse_bad_values_in_one_line(argv, named):
    result = subprocess.run([CATSDOGS, *argv], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"catsdogs {argv[0]}: error: "), result.stderr[-3000:]
    assert result.stdout == ""  # no request printed
    for text in named:
        assert text in lines[0], (text, lines[0])
