"""cloudbuild.yaml is checked here as far as it can be without Google Cloud: files, substitutions, and its
catsdogs commands run with --dry-run."""

import os
import re

import pytest
import yaml

from pipelines.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT_IN = {"PROJECT_ID": "my-project", "COMMIT_SHA": "0123456789abcdef", "SHORT_SHA": "0123456", "BUILD_ID": "b"}


@pytest.fixture(scope="module")
def build() -> dict:
    with open(os.path.join(ROOT, "cloudbuild.yaml")) as f:
        return yaml.safe_load(f)


def substitute(text: str, build: dict) -> str:
    values = {**BUILT_IN, **build["substitutions"]}
    for _ in range(3):  # substitutions may use others (dynamicSubstitutions)
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)
    return text


def test_every_substitution_used_is_declared_or_built_in(build):
    used = set(re.findall(r"\$\{(\w+)\}|\$(_\w+)", yaml.safe_dump(build)))
    names = {a or b for a, b in used}
    assert names, "cloudbuild.yaml uses no substitutions?"
    assert names <= set(build["substitutions"]) | set(BUILT_IN), names - set(build["substitutions"]) - set(BUILT_IN)
    assert all(name.startswith("_") for name in build["substitutions"])


def test_every_dockerfile_and_path_it_names_exists(build):
    for step in build["steps"]:
        args = step.get("args", [])
        for flag, value in zip(args, args[1:]):
            if flag == "-f":
                assert os.path.isfile(os.path.join(ROOT, value)), value
    assert {os.path.basename(os.path.dirname(a)) for s in build["steps"] for a in s.get("args", []) if
            a.endswith("Dockerfile")} == {"components", "trainer", "serving"}


def test_images_are_pushed_before_the_pipeline_is_submitted(build):
    steps = {s["id"]: s for s in build["steps"]}
    assert {"push-components", "push-trainer", "push-serving"} <= set(steps["submit"]["waitFor"])
    for name in ("components", "trainer", "serving"):
        assert steps[f"push-{name}"]["waitFor"] == [f"build-{name}", "test"]
    assert build["options"]["logging"] == "CLOUD_LOGGING_ONLY"


@pytest.mark.parametrize("step_id", ["compile", "submit"])
def test_the_catsdogs_steps_run_here(build, step_id, tmp_path, capsys, monkeypatch):
    (step,) = [s for s in build["steps"] if s["id"] == step_id]
    assert step["entrypoint"] == "catsdogs"
    args = [substitute(a, build).replace("/workspace", str(tmp_path)) for a in step["args"]]
    if step_id == "submit":
        args.append("--dry-run")
    assert main(args) == 0
    out = capsys.readouterr().out
    if step_id == "compile":
        text = (tmp_path / "pipeline.yaml").read_text()
        assert "us-central1-docker.pkg.dev/my-project/catsdogs/catsdogs-trainer:0123456789abcdef" in text
    else:
        assert '"gcsOutputDirectory": "gs://my-project-catsdogs/pipeline-root"' in out
        assert '"commit": "0123456789abcdef"' in out
