"""`python -m pipelines.cli`: the `catsdogs` command."""

import sys

from pipelines.cli import main

sys.exit(main())
