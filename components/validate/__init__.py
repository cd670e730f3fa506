"""Stage between convert and train: validates the image data (duplicates, leakage, near-duplicates, balance,
image statistics) and gates training on leakage and conflicting labels (core.py). Nothing imported here: the
CLI reads config.py for its flags without loading Beam (core.py's output staging imports it)."""
