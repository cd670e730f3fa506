"""Stage between prepare and convert: validates the image CSV (duplicates, leakage, near-duplicates, balance,
image statistics) and gates training on leakage and conflicting labels (core.py). Nothing imported here: the
CLI reads config.py for its flags without loading Beam (core.py's output staging imports it)."""
