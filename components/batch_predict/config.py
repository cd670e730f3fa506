"""Batch prediction's settings, written once: `catsdogs batch-predict`'s flags, batch_predict's defaults and the
Vertex batch-prediction pipeline's parameters come from BatchConfig (the component's literal default is checked
against it by tests/test_structure.py: a component's signature cannot import)."""

from __future__ import annotations

from dataclasses import dataclass

from components.options import option


@dataclass(frozen=True)
class BatchConfig:
    batch_size: int = option(32, "images per model call (default %(default)s)")


BATCH = BatchConfig()
