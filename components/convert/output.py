"""What `catsdogs convert` writes into its output folder; the folder's ownership, staging and manifest are
components/outputs.py's, shared with batch-predict.

A run stages everything beside the output and moves it into place only when it has succeeded, so a failed run
(every image missing, a bad Beam option, a killed process) leaves the previous conversion exactly as it was. Only
files with one of these names that the manifest lists are replaced; shards the manifest does not list are refused
(training would read another dataset's shards beside ours).
"""

from __future__ import annotations

import re

from components.contracts import LABELS_FILE, SPLIT_PREFIX, SUMMARY_FILE
from components.outputs import Kind

ERRORS_FILE = "errors-00000-of-00001.csv"
_PREFIXES = "|".join(SPLIT_PREFIX.values())
KIND = Kind(
    tool="catsdogs convert",
    ours=re.compile(rf"^(({_PREFIXES})-\d{{5}}-of-\d{{5}}\.tfrecord(\.gz)?|(errors|facts)-\d{{5}}-of-\d{{5}}\.csv|"
                    rf"{re.escape(LABELS_FILE)}|{re.escape(SUMMARY_FILE)})$"),
    claimed=re.compile(rf"^({_PREFIXES})-.*\.tfrecord"),  # what training reads as this folder's shards
    last=SUMMARY_FILE,
)
