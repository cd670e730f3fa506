"""Calibration for the report: ECE and the reliability bins are defined once, in components/calibration.py (training
fits the temperature and the threshold with the same functions)."""

from components.calibration import BINS, at_threshold, precision_recall_curve, reliability, scale

__all__ = ["BINS", "at_threshold", "precision_recall_curve", "reliability", "scale"]
