from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def validate(
    image_csv: Input[Dataset],
    converted: Input[Dataset],
    tfrecords: Output[Dataset],
    validation: Output[Artifact],
    metrics: Output[Metrics],
    fix: bool = False,
    max_leakage: int = 0,
    max_conflicting: int = 0,
    near_duplicate_distance: int = 8,
    max_imbalance: float = 0.0,
    image_size: int = 150,
    wandb_settings: Optional[Dict[str, str]] = None,
):
    """Validates the converted images before training and fails the step on leakage or conflicting labels.

    Finds exact copies (content hash) and near copies (perceptual hash) within and across splits, counts per split
    and label, and image statistics, from the facts conversion wrote beside its records: no image is read again
    (except the thumbnails of the pairs in the report). The defaults here are components/validate/core.py's (a test
    checks them).

    Args:
        image_csv: CSV with columns split,image_uri,label (the output of prepare), the one converted.
        converted: The convert step's output, written with facts: its records and facts-*.csv.
        tfrecords: The records the rest of the run reads: converted's (linked or copied, not read), with fix less
            the rows set to DISCARD; summary.json counts what is left.
        validation: Folder: validation.json (counts, balance, statistics), pairs.csv (every pair found), and with
            fix cleaned.csv and quarantine.csv (the rows set to DISCARD, with the reason).
        metrics: The counts: images, leakage, conflicting, exact_*, near_*, imbalance, fixed_*.
        fix: Set the held-out copy of each pair across splits and both rows of a conflicting pair to DISCARD,
            instead of failing.
        max_leakage: Pairs across splits (exact or near) allowed before the step fails.
        max_conflicting: Pairs of (near-)identical images with different labels allowed before the step fails.
        near_duplicate_distance: Largest Hamming distance in bits between two 64-bit pHashes to call them near copies.
        max_imbalance: The step fails when TRAIN's largest/smallest label count is over this; 0: not checked.
        image_size: The training image size: images smaller than this are counted.
        wandb_settings: W&B settings (tracking.settings); when given the step is a W&B run logging the counts.
    """
    import logging

    from components import logs, tracking
    from components.convert.schema import read_summary
    from components.step_summary import write_summary
    from components.validate.core import check_gate, summary_line
    from components.validate.core import validate as run_validation
    from components.validate.records import read_dropped, without_dropped

    logs.setup()
    config = {"fix": fix, "max_leakage": max_leakage, "max_conflicting": max_conflicting,
              "near_duplicate_distance": near_duplicate_distance, "max_imbalance": max_imbalance}
    with tracking.step_run("validate", "data", wandb_settings, config) as run:
        run.use("image_uris_csv", image_csv.uri)
        run.use("tfrecords", converted.uri)
        report = run_validation(image_csv.uri, validation.uri, fix=fix, max_leakage=max_leakage,
                                max_conflicting=max_conflicting, near_duplicate_distance=near_duplicate_distance,
                                max_imbalance=max_imbalance, image_size=image_size, facts_dir=converted.uri)
        counts = report.metrics()
        for name, value in counts.items():
            metrics.log_metric(name, value)
        if run.run is not None:
            run.run.log(counts)
        try:
            check_gate(report, validation.uri)
        except ValueError as e:
            logging.getLogger("catsdogs.validate").error("%s", e)  # the line `catsdogs run` shows
            raise
        without_dropped(converted.uri, tfrecords.uri, read_dropped(validation.uri) if fix else {})
        left = read_summary(tfrecords.uri)
        tfrecords.metadata.update({name: left[name] for name in ("labels", "per_split", "format")})
        write_summary(tfrecords, "validated: " + summary_line(report))
        run.log_output("tfrecords", tfrecords.uri, {"images": report.images, **report.fixed})
        logging.getLogger("catsdogs.validate").info("%s", summary_line(report))
