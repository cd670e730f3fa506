"""catsdogs pipeline stages: each sub-package holds a stage's plain-Python core and its thin KFP component."""
