"""Batch prediction: a folder or CSV of images scored by a SavedModel with Beam's RunInference (core.py)."""
