"""`python -m glmha.compare RECIPE.yaml`: the same as `glmha-compare RECIPE.yaml`."""

import sys

from glmha.compare.cli import main

sys.exit(main())
