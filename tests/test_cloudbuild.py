"""cloudbuild.yaml, checked as far as it can be without Google Cloud.

Without a container engine: files, substitutions, the build's identity, the Google builder steps' arguments, and
its catsdogs commands run here with --dry-run. With one (marked `images`): the steps that use our images run
in them the way Cloud Build runs a step, i.e. `docker run` of the step's image as the image's own user, with
the step's entrypoint and substituted args, /workspace a root-owned volume that is also the working directory,
HOME=/builder/home (root-owned too), and a metadata server that hands out credentials.
"""

import json
import os
import re
import subprocess

import pytest
import yaml

from pipelines.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "images", "engine.sh")
# What every build has, a manual `gcloud builds submit` included (cloud.google.com/build/docs/configuring-builds/
# substitute-variable-values, "Using default substitutions"); the builds a trigger starts also have these, which a
# manual build leaves empty.
BUILT_IN = {"PROJECT_ID": "my-project", "BUILD_ID": "0123456789abcdef", "PROJECT_NUMBER": "123456",
            "LOCATION": "global"}
TRIGGERED_ONLY = ("COMMIT_SHA", "SHORT_SHA", "REVISION_ID", "BRANCH_NAME", "TAG_NAME", "REPO_NAME", "TRIGGER_NAME")
REGISTRY = "us-central1-docker.pkg.dev/my-project/catsdogs"
OURS = re.compile(r"^" + re.escape(REGISTRY) + r"/catsdogs-(components|trainer|serving):0123456789abcdef$")
BUILDERS = "gcr.io/cloud-builders/"


@pytest.fixture(scope="module")
def build() -> dict:
    with open(os.path.join(ROOT, "cloudbuild.yaml")) as f:
        return yaml.safe_load(f)


def substitute(text: str, build: dict, given: dict | None = None) -> str:
    """The text as a manual build substitutes it: built-ins, then the file's defaults overridden by `given` (the
    --substitutions of `gcloud builds submit`); a trigger's built-ins are empty there."""
    values = {**dict.fromkeys(TRIGGERED_ONLY, ""), **BUILT_IN, **build["substitutions"], **(given or {})}
    for _ in range(3):  # substitutions may use others (dynamicSubstitutions)
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)
    return text


def substituted_steps(build: dict) -> dict[str, dict]:
    return {s["id"]: {**s, "name": substitute(s["name"], build),
                      "args": [substitute(a, build) for a in s.get("args", [])]} for s in build["steps"]}


def waits_for(steps: dict[str, dict], step_id: str) -> set[str]:
    """Every step that must finish before step_id starts (waitFor, transitively; none: all earlier steps)."""
    ids = list(steps)
    direct = steps[step_id].get("waitFor", ids[:ids.index(step_id)])
    direct = [] if direct == ["-"] else direct
    return set(direct).union(*(waits_for(steps, d) for d in direct)) if direct else set()


def test_every_substitution_used_is_declared_or_built_in(build):
    used = set(re.findall(r"\$\{(\w+)\}|\$(_\w+)", yaml.safe_dump(build)))
    names = {a or b for a, b in used}
    assert names, "cloudbuild.yaml uses no substitutions?"
    assert names <= set(build["substitutions"]) | set(BUILT_IN), names - set(build["substitutions"]) - set(BUILT_IN)
    assert all(name.startswith("_") for name in build["substitutions"])


def test_the_header_example_works_as_written_with_a_manual_build(build):
    """The command in cloudbuild.yaml's header, run by hand: every image it builds, pushes or runs gets a valid
    reference. (A tag of ${COMMIT_SHA} is empty there: `invalid reference format`.)"""
    with open(os.path.join(ROOT, "cloudbuild.yaml")) as f:
        header = "".join(line.lstrip("# ").rstrip("\\\n") + " " for line in f if line.startswith("#"))
    example = re.search(r"gcloud builds submit .*?--substitutions=(\S+)", header)
    assert example, header
    given = dict(pair.split("=", 1) for pair in example[1].split(","))
    references = []
    for step in build["steps"]:
        args = [substitute(a, build, given) for a in step.get("args", [])]
        references.append(substitute(step["name"], build, given))
        references += [a for a in args if "docker.pkg.dev" in a and not a.startswith("--")]
        if "--images-tag" in args:
            assert args[args.index("--images-tag") + 1], step["id"]
    ours = [r for r in references if "/catsdogs-" in r]
    assert ours, references
    for reference in ours:  # Docker's reference grammar: a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
        assert re.fullmatch(r"[a-z0-9.-]+/[a-z0-9_./-]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", reference), reference


def test_every_dockerfile_and_path_it_names_exists(build):
    for step in build["steps"]:
        args = step.get("args", [])
        for flag, value in zip(args, args[1:], strict=False):
            if flag == "-f":
                assert os.path.isfile(os.path.join(ROOT, value)), value
    assert {os.path.basename(os.path.dirname(a)) for s in build["steps"] for a in s.get("args", []) if
            a.endswith("Dockerfile")} == {"components", "trainer", "serving"}


def test_images_are_pushed_before_the_pipeline_is_submitted(build):
    steps = {s["id"]: s for s in build["steps"]}
    assert {"push-components", "push-trainer", "push-serving"} <= set(steps["submit"]["waitFor"])
    for name in ("components", "trainer", "serving"):
        assert steps[f"push-{name}"]["waitFor"] == [f"build-{name}", "test"]


def test_cloudbuild_runs_as_the_pipelines_service_account(build):
    # Since 2024 new projects run builds as the Compute Engine default account unless the config names one; a
    # build with its own account must log to Cloud Logging or its own bucket (else Cloud Build refuses it).
    account = substitute("${_SERVICE_ACCOUNT}", build)
    assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@my-project\.iam\.gserviceaccount\.com", account)
    assert substitute(build["serviceAccount"], build) == f"projects/my-project/serviceAccounts/{account}"
    logging = build["options"]["logging"]
    assert logging == "CLOUD_LOGGING_ONLY" or (logging == "GCS_ONLY" and build.get("logsBucket"))
    submit = substituted_steps(build)["submit"]["args"]
    assert submit[submit.index("--service-account") + 1] == account, "the pipeline must run as the build's account"


def test_cloudbuild_google_builder_steps_build_and_push_what_the_catsdogs_steps_use(build):
    steps = substituted_steps(build)
    built, pushed = {}, {}
    for step_id, step in steps.items():
        if not step["name"].startswith(BUILDERS) or step.get("entrypoint"):
            continue
        args = step["args"]
        assert step["name"] == BUILDERS + "docker", step_id
        if args[0] == "build":
            dockerfile, tag = args[args.index("-f") + 1], args[args.index("-t") + 1]
            name = os.path.basename(os.path.dirname(dockerfile))
            assert tag == f"{REGISTRY}/catsdogs-{name}:0123456789abcdef" and args[-1] == ".", args
            built[tag] = step_id
        else:
            assert args[0] == "push" and len(args) == 2, args
            assert built.get(args[1]) in waits_for(steps, step_id), f"{step_id} pushes {args[1]} before building it"
            pushed[args[1]] = step_id
    assert set(pushed) == set(built) and len(built) == 3
    for step_id, step in steps.items():
        if step["name"].startswith(BUILDERS):
            continue
        images = [step["name"], *(a for a in step["args"] if OURS.match(a))]
        # The images a submitted pipeline runs must be pushed before it starts (compiling only names them).
        if step["args"][:1] == ["submit"]:
            registry = step["args"][step["args"].index("--images-registry") + 1]
            tag = step["args"][step["args"].index("--images-tag") + 1]
            images += [f"{registry}/catsdogs-{name}:{tag}" for name in ("components", "trainer", "serving")]
        for used in filter(OURS.match, images):
            assert used in pushed and pushed[used] in waits_for(steps, step_id), f"{step_id} uses {used} unpushed"


def test_cloudbuild_catsdogs_steps_run_as_root_in_the_root_owned_workspace(build):
    # Cloud Build runs a step as its image's user and /workspace belongs to root; the compile step writes there.
    with open(os.path.join(ROOT, "images", "components", "Dockerfile")) as f:
        users = re.findall(r"^USER (\S+)$", f.read(), re.M)
    assert not users or users[-1] in ("root", "0", "0:0"), users
    steps = substituted_steps(build)
    output = steps["compile"]["args"][steps["compile"]["args"].index("--output") + 1]
    assert output.startswith("/workspace/")
    for path in build["artifacts"]["objects"]["paths"]:
        assert os.path.join("/workspace", path) == output, path


def _as_run_here(step: dict, workspace: str) -> list[str]:
    return [a.replace("/workspace", workspace) for a in step["args"]]


@pytest.mark.parametrize("step_id", ["compile", "submit"])
def test_the_catsdogs_steps_run_here(build, step_id, tmp_path, capsys, metadata_server):
    step = substituted_steps(build)[step_id]
    assert step["entrypoint"] == "catsdogs"
    args = _as_run_here(step, str(tmp_path))
    if step_id == "submit":
        args.append("--dry-run")
    assert main(args) == 0
    out = capsys.readouterr().out
    if step_id == "compile":
        text = (tmp_path / "pipeline.yaml").read_text()
        assert f"{REGISTRY}/catsdogs-trainer:0123456789abcdef" in text
    else:
        request = json.loads(out)
        assert request["runtimeConfig"]["gcsOutputDirectory"] == "gs://my-project-catsdogs/pipeline-root"
        assert request["labels"]["commit"] == "0123456789abcdef"
        assert request["runtimeConfig"]["parameterValues"]["service_account"] == request["serviceAccount"]
    assert metadata_server.token_requests() == []


def _engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True)


@pytest.mark.images
def test_cloudbuild_steps_run_in_our_images_as_cloud_build_runs_them(build, image, tmp_path, metadata_server):
    """Every step that is not a Google builder's docker build or push (checked above by their arguments) nor the
    test step (this suite), in the file's order: our images as their own user (root), a builder's bash as root."""
    steps = substituted_steps(build)
    workspace, home = tmp_path / "workspace", tmp_path / "builder-home"
    for folder in (workspace, home):
        folder.mkdir()
        os.chown(folder, 0, 0)
        folder.chmod(0o755)  # as Cloud Build's: root's, not writable by others
    outputs = {}
    for step_id, step in steps.items():
        match = OURS.match(step["name"])
        if step_id == "test" or (step["name"].startswith(BUILDERS) and not step.get("entrypoint")):
            continue
        run = ["run", "--rm", "--network", "host", "--volume", f"{workspace}:/workspace",
               "--volume", f"{home}:/builder/home", "--workdir", "/workspace", "--env", "HOME=/builder/home",
               "--env", f"GCE_METADATA_HOST={metadata_server.host}", "--env", f"GCE_METADATA_IP={metadata_server.host}"]
        if match:
            local = image(match[1])  # images/build.sh's build of the same Dockerfile
        else:
            # A Google builder's shell step: builders run as root; our image stands in for its bash.
            assert step["name"].startswith(BUILDERS) and step["entrypoint"] == "bash", step_id
            local = image("components")
            run += ["--user", "0"]
        args = [*step["args"], *(["--dry-run"] if step_id == "submit" else [])]  # nothing is submitted
        result = _engine(*run, "--entrypoint", step["entrypoint"], local, *args)
        assert result.returncode == 0, f"step {step_id} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs[step_id] = result.stdout
    assert {"compile", "submit"} <= set(outputs)
    for path in build["artifacts"]["objects"]["paths"]:
        assert (workspace / path).is_file(), f"artifact {path} was not written"
    compiled = yaml.safe_load((workspace / "pipeline.yaml").read_text())
    assert compiled["pipelineInfo"]["name"] == "catsdogs"
    request = json.loads(outputs["submit"][outputs["submit"].index("{"):])
    account = substitute("${_SERVICE_ACCOUNT}", build)
    assert request["serviceAccount"] == account
    assert request["runtimeConfig"]["parameterValues"]["service_account"] == account
    assert metadata_server.token_requests() == [], "a dry run asked for a token"
