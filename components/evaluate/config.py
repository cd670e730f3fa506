"""The deployment gate's limits, written once: the CLI's flags (train, run), both pipelines' parameters and
champion.decide's defaults come from GateConfig (the evaluate component takes min_accuracy without a default and
max_regression with a literal one checked against this by tests/test_structure.py: a component's signature
cannot import). The data validation gate's limits are components/validate/config.py's."""

from __future__ import annotations

from dataclasses import dataclass

from components.options import option


@dataclass(frozen=True)
class GateConfig:
    # The accuracy a candidate must reach on top of beating the largest class's share. Beating a constant guess
    # is already required; a floor above it depends on the data, so none is imposed.
    min_accuracy: float = option(0.0, "deploy only when held-out accuracy reaches this, besides beating always "
                                      "answering the largest class (default %(default)s)")
    max_regression: float = option(0.0, "deploy only when held-out accuracy is at most this much below the served "
                                        "version's, scored on the same images (default %(default)s: a tie deploys)")


GATE = GateConfig()
