"""`glmha-convert`: inspect (and, in later versions, convert) an official CSA checkpoint."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

from glmha.archs import FAMILIES
from glmha.errors import GlmhaError
from glmha.io_utils import atomic_write_text, check_writable_target
from glmha.loader import load
from glmha.report import describe, format_report

PROG = "glmha-convert"


def parse_input_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got '{text}'")
    height = int(match.group(1))
    width = int(match.group(2) or height)
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got '{text}'")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Report a Restormer / MST++ / MST checkpoint: family, hyperparameters, CSA "
        "layers, parameters and MACs (convolutions and linear layers only, and including the "
        "attention matrix products).",
    )
    parser.add_argument("checkpoint", help=".pth/.pt (read with weights_only=True) or .safetensors")
    parser.add_argument("--dry-run", action="store_true", help="report the model and stop")
    parser.add_argument("--family", choices=sorted(FAMILIES), help="skip detection, force a family")
    parser.add_argument(
        "--input-size", type=parse_input_size, default=(256, 256), metavar="N|HxW",
        help="input size for the MAC count (default 256; MST gets its mask shape automatically)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except GlmhaError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.json:
        check_writable_target(args.json, what="--json")
    if not args.dry_run:
        raise GlmhaError(
            "this version of glmha only inspects checkpoints; run with --dry-run "
            "(conversion to GLMHA is not available yet)"
        )
    model = load(args.checkpoint, family=args.family)
    height, width = args.input_size
    report = describe(model, height, width)
    print(f"checkpoint       {args.checkpoint}")
    print(format_report(report))
    if args.json:
        data = {"checkpoint": str(args.checkpoint), **report.to_json()}
        atomic_write_text(args.json, json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
