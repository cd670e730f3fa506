from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import LOCAL


@dsl.component(base_image=LOCAL.components, install_kfp_package=False)
def prepare(
    images_root: str,
    image_csv: Output[Dataset],
    train_fraction: float = 0.8,
    validation_fraction: float = 0.1,
):
    """Scans labelled images (<label>/<file> or <split>/<label>/<file>, local or gs://) into a CSV with
    columns split,image_uri,label. Without split folders the split is a stable hash of each path."""
    from components import logs
    from components.prepare.core import prepare_csv

    logs.setup()
    image_csv.metadata.update(prepare_csv(images_root, image_csv.uri, train_fraction, validation_fraction))
