"""Stage 1: scan a labelled image folder (local or gs://) into a TFRecorder-style CSV."""

from components.prepare.core import SPLITS, prepare_csv, scan_images

__all__ = ["SPLITS", "prepare_csv", "scan_images"]
