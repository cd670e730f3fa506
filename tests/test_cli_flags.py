"""Flags spelled one way and generated from the stage configs, through the `catsdogs` command."""

import subprocess
import sys

import pytest

from components.deploy.config import DEPLOY
from components.prepare.config import PREPARE

CATSDOGS = [sys.executable, "-m", "pipelines.cli"]
DEPLOY_ARGS = ["deploy", "gs://bucket/runs/7/model", "--project", "my-project", "--images-registry",
               "europe-west4-docker.pkg.dev/my-project/catsdogs", "--dry-run"]


def catsdogs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CATSDOGS, *args], capture_output=True, text=True, timeout=120)


def test_region_is_the_flag_of_every_cloud_command_and_location_still_works_unlisted():
    by_region = catsdogs(*DEPLOY_ARGS, "--region", "europe-west4")
    by_location = catsdogs(*DEPLOY_ARGS, "--location", "europe-west4")
    assert by_region.returncode == 0, by_region.stderr[-2000:]
    assert by_region.stdout == by_location.stdout
    assert "europe-west4-aiplatform.googleapis.com" in by_region.stdout
    for command in ("deploy", "promote", "rollback", "submit", "schedule", "convert", "batch-predict"):
        shown = catsdogs(command, "--help").stdout
        assert "--region" in shown and "--location" not in shown, command


@pytest.mark.parametrize("command", [DEPLOY_ARGS, ["promote", "--project", "p", "--dry-run"],
                                     ["rollback", "--project", "p", "--dry-run"]], ids=lambda c: c[0])
def test_a_missing_region_is_one_error_line(command):
    done = catsdogs(*command)
    assert done.returncode == 2
    assert done.stderr == f"catsdogs {command[0]}: error: the following arguments are required: --region\n"


def test_a_config_default_reaches_the_request_without_a_flag():
    done = catsdogs(*DEPLOY_ARGS, "--region", "europe-west4")
    assert f'"machineType": "{DEPLOY.machine_type}"' in done.stdout


def test_prepare_splits_with_the_configs_fractions_when_no_flag_is_given(tmp_path):
    from components.prepare.core import hash_split

    for label in ("cats", "dogs"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(30):
            (tmp_path / "images" / label / f"{i}.jpg").write_bytes(b"not read: split by path")
    done = catsdogs("prepare", str(tmp_path / "images"), "--output", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split(",") for line in (tmp_path / "out.csv").read_text().splitlines()[1:]]
    root = str(tmp_path / "images")
    expected = [hash_split(uri[len(root) + 1:], PREPARE.train_fraction, PREPARE.validation_fraction)
                for _, uri, _ in rows]
    assert [split for split, _, _ in rows] == expected
