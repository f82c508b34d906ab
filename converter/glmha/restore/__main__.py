"""`python -m glmha.restore MODEL INPUT... -o OUTDIR`: the same as `glmha-restore`."""

import sys

from glmha.restore.cli import main

sys.exit(main())
