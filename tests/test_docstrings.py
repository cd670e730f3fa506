"""Every KFP component documents each of its parameters, inputs and outputs, under `Args:` (and what it returns
under `Returns:`): the Vertex UI shows those descriptions beside each input and output of a step. The component
modules are found by reading the source, so a new component is checked without being listed here."""

import ast
import importlib
import inspect
import os
import re

import pytest
from kfp.dsl.base_component import BaseComponent

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Example|Examples|Note|Notes):\s*$")
ENTRY = re.compile(r"^(\s*)(\w+)(?:\s*\([^)]*\))?:\s*\S")


def _is_component_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, (ast.Attribute, ast.Name)) and \
        getattr(target, "attr", getattr(target, "id", "")) in ("component", "container_component")


def component_modules() -> list[str]:
    """The modules under components/ and pipelines/ that define a component (a function decorated with
    dsl.component or dsl.container_component)."""
    found = []
    for folder in ("components", "pipelines"):
        for parent, _, names in os.walk(os.path.join(REPOSITORY, folder)):
            for name in sorted(names):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(parent, name)
                tree = ast.parse(open(path, encoding="utf-8").read())
                if any(isinstance(node, ast.FunctionDef) and any(map(_is_component_decorator, node.decorator_list))
                       for node in ast.walk(tree)):
                    found.append(os.path.relpath(path, REPOSITORY)[:-3].replace(os.sep, "."))
    return found


def components() -> list[BaseComponent]:
    """Each component defined in those modules (not the ones they import, e.g. GCPC's ops)."""
    found = {}
    for module_name in component_modules():
        module = importlib.import_module(module_name)
        for component in vars(module).values():
            func = getattr(component, "python_func", None)
            if isinstance(component, BaseComponent) and func is not None and func.__module__ == module_name:
                found[f"{module_name}.{func.__name__}"] = component
    return [found[name] for name in sorted(found)]


def documented(docstring: str) -> tuple[set[str], bool]:
    """The names under `Args:` in a Google-style docstring, and whether it has a `Returns:` section."""
    names, section, indent = set(), "", None
    for line in inspect.cleandoc(docstring or "").splitlines():
        if match := SECTION.match(line):
            section, indent = match.group(1), None
            continue
        if section in ("Args", "Arguments") and (entry := ENTRY.match(line)):
            if indent is None:
                indent = len(entry.group(1))
            if len(entry.group(1)) == indent:
                names.add(entry.group(2))
    return names, bool(re.search(r"^\s*Returns:\s*$", docstring or "", re.M))


def undocumented(component: BaseComponent) -> list[str]:
    """What the component's docstring leaves out (or names that are not its parameters)."""
    func = component.python_func
    signature = inspect.signature(func)
    names, returns = documented(func.__doc__)
    problems = [f"{name} is not under Args:" for name in signature.parameters if name not in names]
    problems += [f"Args: names {name}, which is not a parameter" for name in sorted(names - set(signature.parameters))]
    if signature.return_annotation not in (inspect.Signature.empty, None) and not returns:
        problems.append("what it returns is not under Returns:")
    return problems


COMPONENTS = components()


def test_the_components_are_found():
    names = {c.python_func.__name__ for c in COMPONENTS}
    assert {"prepare", "validate", "convert", "train", "evaluate", "export", "check_serving", "deploy_local",
            "wandb_settings", "batch_predict"} <= names, names


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: f"{c.python_func.__module__}.{c.name}")
def test_every_component_documents_every_parameter_and_its_result(component):
    assert not undocumented(component), "\n".join(undocumented(component))
    # What the Vertex UI shows: KFP reads each input's description from the docstring's Args.
    inputs = component.component_spec.inputs or {}
    assert not [name for name, spec in inputs.items() if not (spec.description or "").strip()]


def test_the_check_finds_an_undocumented_parameter_and_a_missing_returns():
    from kfp import dsl

    @dsl.component
    def step(images: str, size: int, stale_docs: bool = False) -> int:  # noqa: D417 - what the check must find
        """Does a thing.

        Args:
            images: Documented.
            retired: No longer a parameter.
            size: Documented, on
                two lines.
        """
        return size

    assert undocumented(step) == ["stale_docs is not under Args:", "Args: names retired, which is not a parameter",
                                  "what it returns is not under Returns:"]
