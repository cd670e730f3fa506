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
    wandb_settings: Optional[Dict[str, str]] = None,
):
    """Scans labelled images (<label>/<file> or <split>/<label>/<file>, local or gs://) into a CSV with
    columns split,image_uri,label. Without split folders the split is a stable hash of each path.
    wandb_settings (tracking.pipeline_settings) makes it a W&B run: training_images in, image_uris_csv out."""
    from components import logs, tracking
    from components.prepare.core import prepare_csv

    logs.setup()
    config = {"images_root": images_root, "train_fraction": train_fraction, "validation_fraction": validation_fraction}
    with tracking.step_run("prepare", wandb_settings, config) as run:
        counts = prepare_csv(images_root, image_csv.uri, train_fraction, validation_fraction)
        image_csv.metadata.update(counts)
        run.use("training_images", images_root)
        run.log_output("image_uris_csv", image_csv.uri, counts)
