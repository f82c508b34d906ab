"""`glmha-compare RECIPE.yaml`: GLMHA against baselines built from the same teacher at equal MACs, distilled alike.

    glmha-compare recipes/compare_tiny_cpu.yaml                     # run every row, or finish the unfinished ones
    glmha-compare recipes/x.yaml --set compare.methods=[glmha,prune] --set train.steps=100
    glmha-compare recipes/x.yaml --list                             # the rows and their folders; runs nothing
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from glmha.distill.cli import EXIT_INTERRUPTED
from glmha.errors import GlmhaError

PROG = "glmha-compare"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a student with each method of the recipe's compare section (glmha, prune, linformer, "
        "performer; reformer is listed as not applicable) at the same MACs (b) budget, plus the ablation sweeps, "
        "distil each with the recipe's settings, and write compare.md / .json / .csv / .png in the run folder. "
        "Every row is an ordinary glmha-distill run folder: rerunning skips finished rows and resumes the others.",
    )
    parser.add_argument("recipe", help="a glmha-distill recipe (YAML, version 1) with a `compare:` section")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set compare.target_macs=0.9 --set train.steps=100")
    parser.add_argument("--list", action="store_true", help="validate and list the rows and their folders; "
                        "runs nothing, writes nothing")
    parser.add_argument("--restart", action="store_true",
                        help="start every row over (deletes their checkpoints) instead of resuming or reading "
                        "them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from glmha.compare.runner import load_compare_recipe, plan_rows, run_rows

        recipe, section = load_compare_recipe(args.recipe, args.overrides)
        rows = plan_rows(recipe, section)
        if args.list:
            for row in rows:
                print(f"{row.table:8s} {row.label:28s} {row.folder}")
            return 0
        finished = run_rows(rows, section, restart=args.restart, progress=not args.no_progress)
        if finished is None:
            print(f"{PROG}: stopped; rerun the same command to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        from glmha.compare.outputs import OUTPUTS, write_outputs

        recipe.run_dir.mkdir(parents=True, exist_ok=True)
        results, select = finished
        markdown = write_outputs(recipe.run_dir, results, section, teacher_file=recipe.teacher, select=select)
    except GlmhaError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished rows and the last complete checkpoint of the others are kept",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\n" + markdown)
    print(f"written: {', '.join(str(recipe.run_dir / name) for name in OUTPUTS)}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
