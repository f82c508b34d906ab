"""`python -m glmha.distill RECIPE.yaml` and `accelerate launch -m glmha.distill RECIPE.yaml`."""

import sys

from glmha.distill.cli import main

sys.exit(main())
