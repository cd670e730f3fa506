"""`df.tensorflow.to_tfr(...)`: TFRecorder's pandas entry point, on our Beam pipeline.

    import components.convert.accessor  # registers df.tensorflow
    df.tensorflow.to_tfr(output_dir="gs://bucket/tfrecords", runner="DataflowRunner",
                         project="my-project", region="us-central1")

The DataFrame needs TFRecorder's columns split, image_uri, label. TFRecorder wrote its own format; so does
this accessor unless record_format="jpeg" is asked for.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict

import pandas as pd

from components import storage
from components.beam_runner import dataflow_args
from components.convert.csv_scan import REQUIRED_COLUMNS
from components.convert.pipeline import convert
from components.errors import InputError

# TFRecorder arguments that mean nothing here, and why.
LEGACY_ARGUMENTS = {
    "tfrecorder_wheel": "Dataflow workers run the catsdogs components image (--sdk_container_image); "
                        "no wheel is staged",
    "schema_map": "the schema is fixed (split, image_uri, label); see components/convert/schema.py",
    "job_label": "pass dataflow_options={'job_name': ...} instead",
}


@pd.api.extensions.register_dataframe_accessor("tensorflow")
class TensorFlowAccessor:
    def __init__(self, df: pd.DataFrame):
        self._df = df

    def to_tfr(self, output_dir: str, runner: str = "DirectRunner", project: str | None = None,
               region: str | None = None, dataflow_options: dict | None = None, compression: str | None = None,
               num_shards: int = 0, record_format: str = "tfrecorder", max_error_fraction: float = 0.05,
               **legacy) -> dict:
        """Writes the DataFrame's images as TFRecords to output_dir and returns the conversion summary."""
        unknown = set(legacy) - set(LEGACY_ARGUMENTS)
        if unknown:
            raise TypeError(f"to_tfr() got unexpected arguments {sorted(unknown)}")
        for name in legacy:
            warnings.warn(f"to_tfr({name}=...) is accepted for TFRecorder compatibility and ignored: "
                          f"{LEGACY_ARGUMENTS[name]}", stacklevel=2)
        missing = [c for c in REQUIRED_COLUMNS if c not in self._df.columns]
        if missing:
            raise InputError(f"DataFrame is missing column(s) {', '.join(missing)}; it has {list(self._df.columns)}")

        args = []
        if runner == "DataflowRunner":
            options = dict(dataflow_options or {})
            temp = options.pop("temp_location", storage.join(output_dir, "tmp"))
            args = dataflow_args(project or "", region or "", temp, **options)
        with tempfile.TemporaryDirectory(prefix="to_tfr-") as folder:
            csv_path = os.path.join(folder, "images.csv")
            self._df[list(REQUIRED_COLUMNS)].to_csv(csv_path, index=False)
            summary = convert(csv_path, output_dir, record_format=record_format, compression=compression,
                              num_shards=num_shards, max_error_fraction=max_error_fraction, runner=runner,
                              pipeline_args=args)
        return asdict(summary)
