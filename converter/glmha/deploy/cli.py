"""`glmha-export MODEL --format onnx|torch-export -o OUT`: a deployable, checked export of any model glmha loads.

    glmha-export checkpoints/restormer_denoise_s25.pth --format onnx -o restormer.onnx
    glmha-export student.glmha.safetensors --format torch-export -o student.pt2 --sizes 64x64,96x64,2x64x128
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from glmha.checkpoint import check_readable
from glmha.cli import run_command
from glmha.deploy.export import check_opset, export_model, parse_sizes, require_onnx
from glmha.errors import GlmhaError
from glmha.io_utils import check_writable_target, path_status
from glmha.loader import load
from glmha.runtime import choose_device

PROG = "glmha-export"
EXIT_USAGE = 2  # argparse's status for usage errors; other errors exit 1 as in every glmha command


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (argparse would print the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="Export an official checkpoint of a supported family or a glmha export (converted GLMHA "
        "model) with torch.export (.pt2) or to ONNX, with a dynamic batch and, where the model allows, dynamic "
        "height and width in its size multiple. The written file is run at three sizes against the PyTorch "
        "model (ONNX: with ONNX Runtime on the CPU) and renamed into place only when it matches.",
    )
    parser.add_argument("model", help="checkpoint (.pth/.pt/.safetensors) or glmha export (.glmha.safetensors)")
    parser.add_argument("--format", required=True, choices=("onnx", "torch-export"),
                        help="onnx (needs pip install 'glmha[onnx]') or torch-export (torch.export.save, .pt2)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write (replaced if it "
                        "exists; never the model file)")
    parser.add_argument("--sizes", metavar="SIZES", help="check sizes, HxW or BxHxW separated by commas, e.g. "
                        "64x64,96x64,2x64x128 (default: three sizes in the model's multiple; batch 1, 2, 3 by "
                        "position unless given). A model of one fixed size is exported at their one HxW")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the model is "
                        "traced and the checks' PyTorch side runs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _run(args), interrupted="interrupted; nothing written")


def _run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.sizes) if args.sizes is not None else None
    if args.opset is not None and args.format != "onnx":
        raise GlmhaError("--opset is for --format onnx only")
    check_readable(args.model)
    output = Path(args.output)
    status = path_status(output, what="-o")
    if status is not None and os.path.samestat(status, os.stat(args.model)):
        raise GlmhaError(f"-o {output}: is the input model; glmha never overwrites its input")
    check_writable_target(output, what="-o")
    if args.format == "onnx":
        require_onnx()
        check_opset(args.opset)
    device = choose_device(args.device)
    model = load(args.model).to(device)
    converted = " (converted by glmha)" if model.record.converted else ""
    print(f"{PROG}: {args.model}: {model.title}{converted}, exporting as {args.format} on {device}", flush=True)
    report = export_model(model, output, args.format, sizes=sizes, opset=args.opset,
                          log=lambda line: print(line, flush=True))
    print("\n".join(report.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
