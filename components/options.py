"""A setting's default and help text, written once. Each stage's config (components/<stage>/config.py) declares
its fields with option(); the CLI makes a flag of each field (pipelines/cli/flags.py add_config_flags) and both
pipelines take their parameters' defaults from the same classes. Imports nothing heavy, so `catsdogs --help`
stays fast."""

from __future__ import annotations

import dataclasses


def option(default, help_text: str, **flag):
    """A dataclass field whose flag says `help_text` (argparse's %(default)s works); `flag` holds any other
    add_argument keywords (choices, metavar, type, action)."""
    return dataclasses.field(default=default, metadata={"help": help_text, "flag": flag})


def defaults(config_class) -> dict[str, object]:
    """{name: default} of a config class's fields, in their order."""
    return {f.name: f.default for f in dataclasses.fields(config_class)}
