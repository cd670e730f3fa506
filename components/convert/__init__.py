"""Stage 2: CSV of labelled image URIs -> sharded TFRecords, with an Apache Beam pipeline (pipeline.py).

Kept free of imports: training and the serving image read the record schema (schema.py) without Beam or
pandas. `import components.convert.accessor` registers TFRecorder's `df.tensorflow.to_tfr(...)`.
"""
