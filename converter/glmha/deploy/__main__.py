"""`python -m glmha.deploy MODEL --format onnx|torch-export -o OUT`: the same as `glmha-export`."""

import sys

from glmha.deploy.cli import main

sys.exit(main())
