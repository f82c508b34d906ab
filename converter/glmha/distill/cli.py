"""`glmha-distill RECIPE.yaml`: distil a converted student against its teacher (resumes by default).

    glmha-distill recipes/tiny_cpu.yaml                         # run, or continue from the last checkpoint
    glmha-distill recipes/tiny_cpu.yaml --set train.steps=60    # override any recipe key
    glmha-distill recipes/tiny_cpu.yaml --dry-run               # validate, build, one step, print the recipe
    accelerate launch -m glmha.distill recipes/x.yaml           # several processes / GPUs
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from glmha.errors import GlmhaError

PROG = "glmha-distill"
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Distil a GLMHA student against its original teacher as a YAML recipe describes "
        "(Hugging Face Accelerate: mixed precision, gradient accumulation, several processes). Rerunning "
        "the same command continues from the last complete checkpoint in the run directory.",
    )
    parser.add_argument("recipe", help="the recipe (YAML, version 1); see recipes/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set train.lr=1e-4 --set data.batch_size=4 "
                        "(the value is read as YAML)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, build data, teacher and student, run one step, print the resolved "
                        "recipe; writes nothing")
    parser.add_argument("--restart", action="store_true",
                        help="start over: delete this run's checkpoints instead of resuming from them")
    parser.add_argument("--stop-at", type=int, metavar="STEP",
                        help="save a checkpoint at this step and exit (continue later by rerunning); for "
                        "time-limited job slots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from glmha.distill import distill, load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        result = distill(recipe, restart=args.restart, stop_at=args.stop_at, dry_run=args.dry_run,
                         progress=not args.no_progress)
    except GlmhaError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.stopped_by == "signal":
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
