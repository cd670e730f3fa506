from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def validate(
    image_csv: Input[Dataset],
    validated_csv: Output[Dataset],
    validation: Output[Artifact],
    metrics: Output[Metrics],
    fix: bool = False,
    max_leakage: int = 0,
    max_conflicting: int = 0,
    near_duplicate_distance: int = 8,
    max_imbalance: float = 0.0,
    image_size: int = 150,
    wandb_settings: Optional[Dict[str, str]] = None,
    converted: Input[Dataset] = None,
) -> int:
    """Validates the CSV's images before training and fails the step on leakage or conflicting labels.

    Finds exact copies (content hash) and near copies (perceptual hash) within and across splits, counts per split
    and label, and image statistics. The defaults here are components/validate/core.py's (a test checks them).

    Args:
        image_csv: CSV with columns split,image_uri,label (the output of prepare).
        validated_csv: The CSV the rest of the run reads: the input as it is, or with fix the cleaned one.
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
        converted: The convert step's output folder of this CSV: its facts-*.csv are used and no image is read
            (except the thumbnails of the pairs); absent: each image of the CSV is read once.

    Returns:
        The number of rows fix set to DISCARD (0 without fix): when it is not 0 the cleaned CSV needs converting.
    """
    import logging

    from components import logs, storage, tracking
    from components.step_summary import write_summary
    from components.validate.core import CLEANED_FILE, check_gate, summary_line
    from components.validate.core import validate as run_validation

    logs.setup()
    config = {"fix": fix, "max_leakage": max_leakage, "max_conflicting": max_conflicting,
              "near_duplicate_distance": near_duplicate_distance, "max_imbalance": max_imbalance}
    with tracking.step_run("validate", "data", wandb_settings, config) as run:
        run.use("image_uris_csv", image_csv.uri)
        report = run_validation(image_csv.uri, validation.uri, fix=fix, max_leakage=max_leakage,
                                max_conflicting=max_conflicting, near_duplicate_distance=near_duplicate_distance,
                                max_imbalance=max_imbalance, image_size=image_size,
                                facts_dir=converted.uri if converted is not None else None)
        counts = report.metrics()
        for name, value in counts.items():
            metrics.log_metric(name, value)
        if run.run is not None:
            run.run.log(counts)
        source = storage.join(validation.uri, CLEANED_FILE) if fix else image_csv.uri
        storage.write_bytes(validated_csv.uri, storage.read_bytes(source))
        validated_csv.metadata.update(report.counts)
        write_summary(validated_csv, "validated: " + summary_line(report))
        try:
            check_gate(report, validation.uri)
        except ValueError as e:
            logging.getLogger("catsdogs.validate").error("%s", e)  # the line `catsdogs run` shows
            raise
        logging.getLogger("catsdogs.validate").info("%s", summary_line(report))
    return sum(report.fixed.values())
