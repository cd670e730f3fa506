"""Stage 2: CSV of labelled image URIs -> sharded TFRecords, with an Apache Beam pipeline.

Importing it registers the pandas accessor `df.tensorflow.to_tfr(...)` (TFRecorder's entry point).
"""

from components.convert import accessor  # noqa: F401 - registers df.tensorflow
from components.convert.pipeline import ConversionSummary, convert

__all__ = ["ConversionSummary", "convert"]
