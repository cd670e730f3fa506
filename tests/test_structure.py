"""One definition per parameter, one wiring for both DAGs, architectures from a registry or a user's module;
stages that import no other stage's modules."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import tokenize

import pytest
import yaml
from kfp import compiler

from components.convert.component import convert
from components.evaluate.component import evaluate
from components.options import defaults
from components.prepare.component import prepare
from components.train import models
from components.train.component import train
from components.train.config import TrainConfig, parameters
from components.validate.component import validate
from pipelines.cli import main
from pipelines.local import local_pipeline
from pipelines.vertex import compile_vertex_pipeline

TINY_ARCHITECTURE = '''
import keras


def tiny(image_size, num_classes):
    """A user's architecture: the contract's float32 0..255 pixels in, a sigmoid unit (2 classes) or softmax out."""
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    if num_classes == 2:
        return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))
'''


@pytest.fixture(scope="module")
def compiled_pipelines(tmp_path_factory) -> dict[str, dict]:
    folder = tmp_path_factory.mktemp("pipelines")
    compiler.Compiler().compile(local_pipeline, str(folder / "local.yaml"))
    compile_vertex_pipeline(str(folder / "vertex.yaml"))
    return {name: yaml.safe_load((folder / f"{name}.yaml").read_text()) for name in ("local", "vertex")}


@pytest.fixture
def plugin_dir(tmp_path) -> str:
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(TINY_ARCHITECTURE))
    return str(tmp_path)


def test_both_pipelines_take_every_training_parameter_with_trainconfigs_default(compiled_pipelines):
    for name, compiled in compiled_pipelines.items():
        inputs = compiled["root"]["inputDefinitions"]["parameters"]
        for parameter, default in parameters().items():
            assert parameter in inputs, f"the {name} pipeline has no {parameter} parameter"
            assert inputs[parameter].get("defaultValue", "") == default, (name, parameter)
    assert "model_name" not in compiled_pipelines["vertex"]["root"]["inputDefinitions"]["parameters"]


def test_both_pipelines_hand_every_training_parameter_to_the_train_step(compiled_pipelines):
    for name, compiled in compiled_pipelines.items():
        tasks = compiled["root"]["dag"]["tasks"].values()
        train_task = next(task for task in tasks if task["taskInfo"]["name"].startswith("train"))
        for parameter in parameters():
            assert train_task["inputs"]["parameters"][parameter] == {"componentInputParameter": parameter}, name


def test_local_and_vertex_pipelines_are_one_wiring(compiled_pipelines):
    shared = {"prepare CSV", "convert to TFRecords", "validate data", "train", "evaluate vs champion"}

    def wiring(compiled):
        tasks = compiled["root"]["dag"]["tasks"]
        name = {task_id: task["taskInfo"]["name"].split(" (")[0] for task_id, task in tasks.items()}
        return {name[i]: {name[d] for d in task.get("dependentTasks", [])} & shared
                for i, task in tasks.items() if name[i] in shared}

    local, vertex = wiring(compiled_pipelines["local"]), wiring(compiled_pipelines["vertex"])
    assert local == vertex
    assert local["evaluate vs champion"] == {"validate data", "train"}
    assert local["validate data"] == {"prepare CSV", "convert to TFRecords"}


def test_train_help_lists_the_registered_architectures(capsys, monkeypatch):
    monkeypatch.setitem(models.ARCHITECTURES, "registered_in_a_test", models.seed_cnn)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seed_cnn, mobilenet_v3_small, registered_in_a_test" in text


@pytest.mark.parametrize("value, message", [
    ("resnet_9000", "--architecture 'resnet_9000' is unknown: choose from seed_cnn"),
    ("no_such_module_here:tiny", "cannot import 'no_such_module_here'"),
    ("mymodels:missing", "mymodels has no function 'missing'"),
])
def test_a_bad_architecture_is_one_error_line(value, message, records, tmp_path, plugin_dir, monkeypatch, capsys):
    monkeypatch.syspath_prepend(plugin_dir)
    assert main(["train", "--data", records, "--model-dir", str(tmp_path / "m"), "--architecture", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("catsdogs train: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_an_architecture_breaking_the_contract_is_refused(records, tmp_path, plugin_dir, monkeypatch, capsys):
    (tmp_path / "bad_models.py").write_text("import keras\n\ndef wrong(image_size, num_classes):\n"
                                            "    i = keras.Input((8, 8, 3))\n"
                                            "    return keras.Model(i, keras.layers.Flatten()(i))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--data", records, "--model-dir", str(tmp_path / "m"), "--epochs", "1", "--image-size", "32",
                 "--architecture", "bad_models:wrong"]) == 2
    assert "expected (None, 32, 32, 3) to (None, 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_users_architecture_trains_from_pythonpath_and_is_recorded(records, tmp_path, plugin_dir):
    model_dir = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([plugin_dir, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "--data", records, "--model-dir", str(model_dir),
         "--architecture", "mymodels:tiny", "--epochs", "1", "--image-size", "32"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (model_dir / "saved_model.pb").exists()
    assert json.loads((model_dir / "training.json").read_text())["config"]["architecture"] == "mymodels:tiny"


def test_a_users_architecture_is_a_vertex_pipeline_parameter(plugin_dir, capsys):
    assert main(["submit", "--project", "my-project", "--region", "europe-west4", "--pipeline-root", "gs://b/root",
                 "--images", "gs://b/images", "--param", "architecture=mymodels:tiny", "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["runtimeConfig"]["parameterValues"]["architecture"] == "mymodels:tiny"


def test_run_refuses_a_bad_training_flag_before_anything_runs(tmp_path, capsys):
    assert main(["run", "--workdir", str(tmp_path / "w"), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("component", [prepare, convert, evaluate, train], ids=lambda c: c.name)
def test_component_inputs_carry_descriptions_for_the_vertex_ui(component):
    inputs = component.component_spec.inputs or {}
    described = [name for name, spec in inputs.items() if (spec.description or "").strip()]
    assert len(described) >= 0.8 * len(inputs), f"undescribed: {sorted(set(inputs) - set(described))}"


def test_trainconfig_is_the_only_place_of_training_defaults():
    # The train component takes every training parameter without a default of its own.
    inputs = train.component_spec.inputs
    for name in parameters():
        assert inputs[name].default is None and not inputs[name].optional, name
    assert TrainConfig().architecture == models.DEFAULT_ARCHITECTURE in models.ARCHITECTURES


# -- stages import shared modules (components/*.py) and contracts, never another stage's modules -------------------

COMPONENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "components")
# Every package under components/ is a stage (a new stage is checked without being listed here).
STAGES = tuple(sorted(name for name in os.listdir(COMPONENTS)
                      if os.path.isfile(os.path.join(COMPONENTS, name, "__init__.py"))))
# (importing file, imported module) -> why. Each one is a reason to keep, not a list to grow.
ALLOWED = {
    ("train/core.py", "components.convert.schema"):
        "the TFRecord schema convert writes is what training reads: one definition, kept beside its writer",
    ("train/data.py", "components.convert.schema"): "as above: the reader parses convert's schema",
    ("evaluate/core.py", "components.convert.schema"): "as above: evaluation reads the same records",
    ("evaluate/component.py", "components.convert.schema"):
        "the model card states the data's counts from convert's summary.json, read by its one reader",
    ("evaluate/core.py", "components.train.data"):
        "evaluation must decode the held-out records exactly as training did: the same input pipeline",
    ("export/core.py", "components.train.data"):
        "an export is measured on the held-out pixels evaluation sees: the same input pipeline",
    ("convert/inspect.py", "components.train.data"):
        "`catsdogs inspect` finds and identifies the shards as training does (record_files, detect_format)",
    ("evaluate/component.py", "components.deploy.registry"):
        "the evaluation file is written in the Model Registry's schema, which deploy/registry.py defines",
    ("evaluate/component.py", "components.validate.report"):
        "the evaluation report shows the data validation's findings drawn as validation.html draws them: one renderer",
    ("serve/client.py", "components.deploy.vertex"): "`catsdogs predict --endpoint` calls the endpoint deploy made",
    ("serve_check/core.py", "components.train.data"):
        "the serving check sends held-out images of the records training read, found and parsed as training does",
    ("serve/model.py", "components.monitor.profile"):
        "with request logging the server computes each image's statistics while decoding, with the function the "
        "baseline's signature uses, so both sides of the drift tests are measured alike",
    ("train/export.py", "components.monitor.profile"):
        "the export adds the serving_profile signature, whose outputs are the contract drift monitoring defines",
    ("evaluate/component.py", "components.monitor.baseline"):
        "the evaluate step stores the held-out images' drift baseline with the model it scores",
    ("monitor/baseline.py", "components.train.data"):
        "the baseline reads the held-out records as training does (record_files, detect_format, FEATURES)",
    ("monitor/baseline.py", "components.convert.schema"): "the class names, from convert's labels.json",
    ("validate/records.py", "components.convert.schema"):
        "handing on convert's records less the dropped rows needs its layout: which shard holds an image "
        "(shard_of), summary.json and labels.json",
    ("validate/component.py", "components.convert.schema"): "the records' counts, from summary.json's one reader",
    ("validate/records.py", "components.convert.output"):
        "the records handed on are convert's files: the names convert's output owns, staged and committed alike",
}


def imported_modules(path: str, components_dir: str) -> set[str]:
    """Every components.* module a file imports, at any depth (imports inside functions too): `from a import b`
    is module a.b when b is a module under components_dir, else module a."""
    def is_module(dotted: str) -> bool:
        relative = os.path.join(components_dir, *dotted.split(".")[1:])
        return os.path.isdir(relative) or os.path.isfile(relative + ".py")

    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update({m for m in submodules if is_module(m)} or {node.module})
    return {module for module in found if module.split(".")[0] == "components"}


def cross_stage_imports(components_dir: str) -> dict[tuple[str, str], str]:
    """(file relative to components_dir, imported module of another stage) -> that stage, for every stage file."""
    found = {}
    for stage in STAGES:
        for folder, _, files in os.walk(os.path.join(components_dir, stage)):
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, components_dir).replace(os.sep, "/")
                for module in imported_modules(path, components_dir):
                    parts = module.split(".")
                    if len(parts) >= 2 and parts[1] in STAGES and parts[1] != stage:
                        found[(relative, module)] = parts[1]
    return found


def test_stages_import_no_other_stages_modules_but_the_named_exceptions():
    found = cross_stage_imports(COMPONENTS)
    unexplained = sorted(set(found) - set(ALLOWED))
    assert not unexplained, f"a stage imports another stage's module: {unexplained}; move the shared part to " \
                            "components/ (or, with a reason, add it to ALLOWED)"
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"ALLOWED names imports that are gone: {stale}"


def test_the_structure_check_finds_an_added_cross_stage_import(tmp_path):
    for stage in ("serve", "batch_predict"):
        (tmp_path / stage).mkdir()
    (tmp_path / "serve" / "versions.py").write_text("from components import model_store\n")
    (tmp_path / "batch_predict" / "core.py").write_text(
        "from components import storage\n\n\ndef f():\n    from components.serve.versions import newest\n")
    assert cross_stage_imports(str(tmp_path)) == {("batch_predict/core.py", "components.serve.versions"): "serve"}


# -- names cited in docstrings, comments and docs exist ------------------------------------------------------------

REPOSITORY = os.path.dirname(COMPONENTS)
# Not inside a longer path or address (images/components/Dockerfile, .../docs/pipelines/gcpc-...).
REFERENCE = re.compile(r"(?<![\w./-])(?:components|pipelines)(?:[./][A-Za-z_]\w*)+")
# Within components/ a shared module is often cited by its own name: `tracking.settings`, `storage.join`; not
# `images` and `logs`, which are common words too (images.csv, logs/train.log).
SHARED_MODULES = sorted(name[:-3] for name in os.listdir(COMPONENTS)
                        if name.endswith(".py") and name[0] != "_" and name not in ("images.py", "logs.py"))
SHORT_REFERENCE = re.compile(rf"(?<![\w./:-])(?:{'|'.join(SHARED_MODULES)})\.[A-Za-z_]\w*(?![\w/(-]|\.\w)")


def _defined_names(module_file: str) -> dict[str, set[str]]:
    """A module's top-level names, each with the names defined in its body (a class's methods and attributes)."""
    tree = ast.parse(open(module_file).read(), module_file)
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))} | {
                t.id for n in node.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
            names[node.name] = inner if isinstance(node, ast.ClassDef) else set()
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = set()
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(alias.asname or alias.name).split(".")[0]: set() for alias in node.names})
    return names


def reference_exists(reference: str, root: str = REPOSITORY) -> bool:
    """Whether `components.x.y.name` (a module, or a name defined in one) or `components/x/y.py` exists."""
    if reference.endswith(".py") and "/" in reference:
        return os.path.isfile(os.path.join(root, reference))
    parts = reference.replace("/", ".").split(".")
    for i in range(len(parts), 0, -1):
        base = os.path.join(root, *parts[:i])
        if os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py")):
            module_file = base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")
            rest = parts[i:]
            break
    else:
        return False
    if not rest:
        return True
    names = _defined_names(module_file)
    if rest[0] not in names:
        return False
    return len(rest) == 1 or not names[rest[0]] or rest[1] in names[rest[0]]


def _prose(path: str) -> list[tuple[int, str]]:
    """(line number, text) of what people read: a Python file's comments and docstrings (triple-quoted strings),
    every line of any other text file (Markdown docs, a README)."""
    if not path.endswith(".py"):
        return list(enumerate(open(path, encoding="utf-8"), 1))
    with open(path, encoding="utf-8") as f:
        tokens = list(tokenize.generate_tokens(f.readline))
    prose = []
    for token in tokens:
        if token.type == tokenize.COMMENT or (token.type == tokenize.STRING and token.string.endswith(('"""', "'''"))):
            prose += [(token.start[0] + i, line) for i, line in enumerate(token.string.splitlines())]
    return prose


def missing_references(path: str, root: str = REPOSITORY) -> list[str]:
    """The `components.`/`pipelines.` names (dotted, or paths to .py files) that a file cites and that do not
    exist, as "path:line: name". For any text file: code (docstrings and comments), Markdown docs."""
    missing = []
    for number, line in _prose(path):
        short = [f"components.{r}" for r in SHORT_REFERENCE.findall(line)]
        for reference in REFERENCE.findall(line) + short:
            if not reference_exists(reference, root):
                missing.append(f"{os.path.relpath(path, root)}:{number}: {reference}")
    return missing


def _cited_files() -> list[str]:
    files = []
    for folder in ("components", "pipelines", "tests", "benchmarks", "images", "plugins", "docs"):
        for parent, _, names in os.walk(os.path.join(REPOSITORY, folder)):
            files += [os.path.join(parent, n) for n in sorted(names) if n.endswith((".py", ".md"))]
    return files


def test_every_cited_components_or_pipelines_name_exists():
    missing = [m for path in _cited_files() if path != os.path.abspath(__file__) for m in missing_references(path)]
    assert not missing, "\n".join(missing)


def test_a_citation_of_a_missing_module_or_name_is_found(tmp_path):
    doc = tmp_path / "guide.md"
    doc.write_text("The decoder is `components/train/decode.py`; see components.tracking.pipeline_settings and\n"
                   "components.model_store.champion, components.evaluate.core.Evaluation.per_class, "
                   "components/decode.py.\n")
    assert missing_references(str(doc)) == [f"{os.path.relpath(doc, REPOSITORY)}:1: components/train/decode.py",
                                            f"{os.path.relpath(doc, REPOSITORY)}:1: "
                                            "components.tracking.pipeline_settings"]
    code = tmp_path / "component.py"
    code.write_text('def f(wandb_settings):\n    """Args:\n        wandb_settings: tracking.pipeline_settings, '
                    'tracking.settings\n    """\n    return tracking.pipeline_settings  # code is not prose\n')
    assert missing_references(str(code)) == [f"{os.path.relpath(code, REPOSITORY)}:3: "
                                             "components.tracking.pipeline_settings"]


# -- importing our code starts nothing ------------------------------------------------------------------------------

def test_importing_any_module_leaves_tensorflows_runtime_unstarted():
    """A tensor made at import time starts TensorFlow's eager runtime, after which MultiWorkerMirroredStrategy
    cannot be configured ("Collective ops must be configured at program startup"): multi-node `catsdogs train`
    broke that way once, through the decoder. Every module is imported in a fresh process; none may start it."""
    import subprocess
    import sys

    modules = sorted(
        ".".join(os.path.relpath(os.path.join(folder, name), REPOSITORY)[:-3].split(os.sep))
        for top in ("components", "pipelines")
        for folder, _, names in os.walk(os.path.join(REPOSITORY, top))
        for name in names if name.endswith(".py") and name != "__init__.py")
    script = ("import importlib, sys\n"
              "for m in sys.argv[1:]:\n"
              "    importlib.import_module(m)\n"
              "from tensorflow.python.eager import context\n"
              "print('started' if context.context()._context_handle is not None else 'not started')\n")
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, cwd=REPOSITORY,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["not", "started"], (modules, done.stdout[-500:])


# -- every stage's settings written once; long files say why ----------------------------------------------------------

def _configs():
    from components.batch_predict.config import BatchConfig
    from components.beam_config import DataflowConfig
    from components.convert.config import ConvertConfig
    from components.deploy.config import DeployConfig
    from components.evaluate.config import GateConfig
    from components.prepare.config import PrepareConfig
    from components.validate.config import ValidateConfig

    return (PrepareConfig, ValidateConfig, ConvertConfig, DataflowConfig, GateConfig, DeployConfig, BatchConfig)


# Who and where (Dataflow's --project, --region, --service-account): every cloud command asks for them, without a
# default that could drift; they are the same flag everywhere by name, not config settings.
IDENTITY_FIELDS = {"project", "region", "service_account"}


def _config_flags() -> dict[tuple[str, str], set]:
    """(--flag, field name) -> the defaults of the config fields with that flag (Dataflow's and deploy's
    --machine-type differ)."""
    import dataclasses

    flags: dict[tuple[str, str], set] = {}
    for config in _configs():
        for field in dataclasses.fields(config):
            if field.name not in IDENTITY_FIELDS:
                flag = field.metadata["flag"].get("flag", "--" + field.name.replace("_", "-"))
                flags.setdefault((flag, field.name), set()).add(field.default)
    return flags


def _command_flags():
    """(command, --flag, dest, default) of every optional flag of every `catsdogs` command."""
    import argparse

    from pipelines.cli import build_parser

    # argparse has no public way to list a parser's flags: its _actions are what --help itself walks.
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices  # noqa: SLF001
    for command, parser in commands.items():
        for action in parser._actions:  # noqa: SLF001
            for flag in action.option_strings:
                yield command, flag, action.dest, action.default


def test_every_flag_of_a_config_setting_has_the_configs_default():
    flags = _config_flags()
    checked = [(command, (flag, dest), default) for command, flag, dest, default in _command_flags()
               if (flag, dest) in flags]
    assert {key for _, key, _ in checked} == set(flags), "a config field that no command offers as a flag"
    wrong = [(command, key, default, flags[key]) for command, key, default in checked if default not in flags[key]]
    assert not wrong, wrong


def hand_written_config_flags(cli_dir: str, flags) -> list[str]:
    """`add_argument("--x", ...)` calls in the CLI's modules for a config's field (same flag, same dest): written
    by hand, their default and help are a second copy that can drift (add_config_flags makes them from it)."""
    found = []
    for name in sorted(os.listdir(cli_dir)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(cli_dir, name)
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument" and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            flag = node.args[0].value
            dest = next((k.value.value for k in node.keywords if k.arg == "dest" and isinstance(k.value, ast.Constant)),
                        str(flag).lstrip("-").replace("-", "_"))
            if (flag, dest) in flags:
                found.append(f"{name}:{node.lineno}: {flag}")
    return found


def test_no_flag_of_a_config_setting_is_written_by_hand(tmp_path):
    flags = set(_config_flags())
    assert hand_written_config_flags(os.path.join(REPOSITORY, "pipelines", "cli"), flags) == []
    (tmp_path / "data.py").write_text('def f(p):\n    p.add_argument("--train-fraction", type=float, default=0.7)\n'
                                      '    p.add_argument("--format", choices=("onnx",))\n')
    assert hand_written_config_flags(str(tmp_path), flags) == ["data.py:2: --train-fraction"]


def test_components_and_pipelines_defaults_are_their_configs():
    """A component's signature cannot import (KFP runs its source alone), so its literal defaults are checked here;
    the pipelines' parameters and the plain-Python cores import the configs."""
    import inspect

    from components.batch_predict.component import batch_predict
    from components.batch_predict.config import BATCH
    from components.beam_config import PIPELINE_DATAFLOW
    from components.convert.config import CONVERT
    from components.convert.pipeline import convert as convert_core
    from components.deploy.config import DEPLOY
    from components.deploy.registry_components import canary_traffic_split
    from components.evaluate.config import GATE
    from components.prepare.config import PREPARE
    from components.prepare.core import prepare_csv
    from pipelines.batch import build_batch_pipeline
    from pipelines.vertex import build_vertex_pipeline

    def component(c, name):
        return c.component_spec.inputs[name].default

    for name in ("train_fraction", "validation_fraction", "split_by"):
        assert component(prepare, name) == getattr(PREPARE, name)
        assert inspect.signature(prepare_csv).parameters[name].default == getattr(PREPARE, name)
    for name in ("record_format", "num_shards", "max_error_fraction"):
        assert component(convert, name) == getattr(CONVERT, name)
        assert inspect.signature(convert_core).parameters[name].default == getattr(CONVERT, name)
    from components.validate.config import VALIDATE
    from components.validate.core import validate as validate_core

    for name in ("fix", "max_leakage", "near_duplicate_distance", "max_conflicting", "max_imbalance"):
        assert component(validate, name) == getattr(VALIDATE, name), name
        assert inspect.signature(validate_core).parameters[name].default == getattr(VALIDATE, name), name
    assert component(validate, "image_size") == VALIDATE.min_image_size
    assert inspect.signature(validate_core).parameters["image_size"].default == VALIDATE.min_image_size
    assert component(batch_predict, "batch_size") == BATCH.batch_size
    from components.beam_config import DataflowConfig

    for name, default in defaults(DataflowConfig).items():  # empty: Dataflow's own default, as on the CLI
        for step in (convert, batch_predict):
            assert component(step, f"dataflow_{name}") == default, (step.name, name)
    assert component(evaluate, "max_regression") == GATE.max_regression
    assert component(canary_traffic_split, "canary_traffic_percent") == DEPLOY.traffic_percent
    vertex = build_vertex_pipeline().component_spec.inputs
    for parameter, value in (("min_accuracy", GATE.min_accuracy), ("max_regression", GATE.max_regression),
                             ("canary_traffic_percent", DEPLOY.traffic_percent),
                             ("deploy_machine_type", DEPLOY.machine_type),
                             ("deploy_keep_previous", DEPLOY.keep_previous),
                             ("dataflow_machine_type", PIPELINE_DATAFLOW.machine_type),
                             ("dataflow_max_workers", PIPELINE_DATAFLOW.max_workers)):
        assert vertex[parameter].default == value, parameter
    batch = build_batch_pipeline().component_spec.inputs
    assert batch["batch_size"].default == BATCH.batch_size
    assert batch["dataflow_machine_type"].default == PIPELINE_DATAFLOW.machine_type


MAX_LINES = 400


def long_files_without_a_reason(root: str) -> list[str]:
    """Files under components/ and pipelines/ over MAX_LINES whose opening docstring has no `Long:` line saying
    why they are one file."""
    found = []
    for top in ("components", "pipelines"):
        for folder, _, names in os.walk(os.path.join(root, top)):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                text = open(path).read()
                if text.count("\n") <= MAX_LINES:
                    continue
                docstring = ast.get_docstring(ast.parse(text, path)) or ""
                if not any(line.startswith("Long:") for line in docstring.splitlines()):
                    found.append(relative)
    return found


def test_every_file_over_400_lines_says_why_in_its_docstring(tmp_path):
    assert long_files_without_a_reason(REPOSITORY) == []
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "big.py").write_text('"""A module."""\n' + "x = 1\n" * MAX_LINES)
    (tmp_path / "components" / "why.py").write_text('"""A module.\n\nLong: one state machine."""\n' + "x = 1\n" * 500)
    assert long_files_without_a_reason(str(tmp_path)) == ["components/big.py"]
