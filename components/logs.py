"""Log format shared by the CLI and the components (each component runs in its own process)."""

import logging


def setup(level: int = logging.INFO, stream=None) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True,
                        stream=stream)
    for noisy in ("apache_beam", "absl", "tensorflow", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
