"""`python -m span` = the `span` console script (what the Snakemake rules call)."""

import sys

from span.cli import main

sys.exit(main())
