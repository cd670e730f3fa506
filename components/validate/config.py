"""The data validation gate's limits, written once: `catsdogs validate`'s and `run`'s flags, validate()'s defaults
and both pipelines' parameters come from ValidateConfig (the validate component's literal defaults are checked
against it by tests/test_structure.py: a component's signature cannot import)."""

from __future__ import annotations

from dataclasses import dataclass

from components.options import option


@dataclass(frozen=True)
class ValidateConfig:
    fix: bool = option(False, "set held-out copies of TRAIN images and conflicting rows to DISCARD (cleaned.csv, "
                              "quarantine.csv says why) instead of failing")
    max_leakage: int = option(0, "pairs across splits (exact or near) allowed (default %(default)s)")
    # pHash bits of 64: see the measured distances in tests/test_validate.py
    near_duplicate_distance: int = option(8, "largest pHash Hamming distance (bits of 64) of near copies "
                                             "(default %(default)s)")
    max_conflicting: int = option(0, "pairs of copies with different labels allowed (default %(default)s)")
    # largest / smallest label count in TRAIN; 0: not gated, only reported
    max_imbalance: float = option(0.0, "fail when TRAIN's largest/smallest label count is over this (default "
                                       "%(default)s: reported only)")
    min_image_size: int = option(150, "images smaller than this are counted (default %(default)s)",
                                 flag="--image-size", metavar="IMAGE_SIZE")


VALIDATE = ValidateConfig()
