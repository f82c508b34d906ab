"""Write the held-out photographs and their sigma-25 noisy versions as files, for glmha-restore.

Why: glmha-restore works on files, and the offline sample photographs live inside scikit-image. This writes
the three held-out photographs (astronaut, chelsea, coffee; the shipped teacher's test set) as 8-bit PNGs to
`OUT/clean/` and the same images with the fixed noise of the teacher card (sigma 25, seeds 2024 + i) to
`OUT/noisy/`, as 16-bit PNGs: noise clipped to [0, 1] when saved as any image file must be, but not rounded to
8 bits. `--size N` writes N x N versions enlarged by reflection (to try tiling on large images).

    python examples/write_noisy_photos.py runs/photos [--size 1024]

Rerunning rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from glmha.data.held_out import held_out_pairs
from glmha.errors import GlmhaError
from glmha.io_utils import create_folder
from glmha.restore.files import write_image_file


def enlarge(image: torch.Tensor, side: int) -> torch.Tensor:
    """(1, 3, h, w) -> (1, 3, side, side): the photograph mirrored at its edges as often as needed, cropped."""
    while image.shape[-2] < side or image.shape[-1] < side:
        pad_h = min(image.shape[-2] - 1, max(0, side - image.shape[-2]))
        pad_w = min(image.shape[-1] - 1, max(0, side - image.shape[-1]))
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect")  # (1, 3, h + pad_h, w + pad_w)
    return image[..., :side, :side]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write clean/ and noisy/ into")
    parser.add_argument("--size", type=int, help="enlarge every photograph to SIZE x SIZE by reflection")
    args = parser.parse_args(argv)
    try:
        if args.size is not None and args.size < 1:
            raise GlmhaError(f"--size must be at least 1; got {args.size}")
        for folder in ("clean", "noisy"):
            create_folder(args.out / folder, what=f"{folder} folder")
        pairs = held_out_pairs()
        if args.size is not None:  # the noise is drawn again at the new size, with the same seeds
            from glmha.data.degrade import add_gaussian_noise, seeded_generator
            from glmha.data.held_out import NOISE_SEED, SIGMA

            pairs = [(name, big := enlarge(clean, args.size),
                      add_gaussian_noise(big, SIGMA, seeded_generator(NOISE_SEED + index)))
                     for index, (name, clean, _) in enumerate(pairs)]
        for name, clean, noisy in pairs:
            write_image_file(args.out / "clean" / f"{name}.png", clean[0].permute(1, 2, 0).numpy(), bit_depth=8,
                             container="png")  # (3, H, W) -> (H, W, 3)
            write_image_file(args.out / "noisy" / f"{name}.png", noisy[0].permute(1, 2, 0).numpy(),
                             bit_depth=16, container="png")
            print(f"{name}: {clean.shape[-2]}x{clean.shape[-1]}")
    except GlmhaError as error:
        print(f"write_noisy_photos: error: {error}", file=sys.stderr)
        return 1
    print(f"written: {args.out / 'clean'}, {args.out / 'noisy'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
