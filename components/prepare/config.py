"""How prepare splits images without split folders, written once: `catsdogs prepare`'s flags, prepare_csv's
defaults and both pipelines' parameters come from PrepareConfig (the prepare component's literal defaults are
checked against it by tests/test_structure.py: a component's signature cannot import)."""

from __future__ import annotations

from dataclasses import dataclass

from components.options import option

SPLIT_BY = ("path", "content")


@dataclass(frozen=True)
class PrepareConfig:
    train_fraction: float = option(0.8, "without split folders (default %(default)s)")
    validation_fraction: float = option(0.1, "the rest is TEST (default %(default)s)")
    split_by: str = option("path", "without split folders, hash each image's path (files only listed) or its "
                                   "bytes (every file read; exact copies share a split) (default %(default)s)",
                           choices=SPLIT_BY)


PREPARE = PrepareConfig()
