"""Stage 2: CSV of labelled image URIs -> sharded TFRecords, with an Apache Beam pipeline."""

from components.convert.pipeline import ConversionSummary, convert

__all__ = ["ConversionSummary", "convert"]
