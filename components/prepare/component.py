from typing import Dict, Optional

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def prepare(
    images_root: str,
    image_csv: Output[Dataset],
    train_fraction: float = 0.8,
    validation_fraction: float = 0.1,
    split_by: str = "path",
    wandb_settings: Optional[Dict[str, str]] = None,
):
    """Scans labelled images into the CSV that convert reads (columns split,image_uri,label).

    Without split folders each image's split is a stable hash of its path (or with split_by "content" of its
    bytes, so exact copies share a split), so adding images never moves old ones to another split.

    Args:
        images_root: Folder of images, local or gs://, laid out as <label>/<file> or <split>/<label>/<file>.
        image_csv: The CSV written, one row per image (split, image_uri, label), with a header.
        train_fraction: Share of images hashed into TRAIN when there are no split folders (0 to 1).
        validation_fraction: Share hashed into VALIDATION when there are no split folders; the rest is TEST.
        split_by: "path" hashes the relative path (files are only listed); "content" the image's bytes (every file
            is read once).
        wandb_settings: W&B settings (tracking.settings); when given the step is a W&B run
            (training_images in, image_uris_csv out).
    """
    from components import logs, tracking
    from components.prepare.core import prepare_csv
    from components.step_summary import write_summary

    logs.setup()
    config = {"images_root": images_root, "train_fraction": train_fraction, "validation_fraction": validation_fraction,
              "split_by": split_by}
    with tracking.step_run("prepare", "data", wandb_settings, config) as run:
        counts = prepare_csv(images_root, image_csv.uri, train_fraction, validation_fraction, split_by)
        image_csv.metadata.update(counts)
        write_summary(image_csv, f"{sum(counts.values())} images found: "
                                 + ", ".join(f"{split} {n}" for split, n in counts.items()))
        run.use("training_images", images_root)
        run.log_output("image_uris_csv", image_csv.uri, counts)
