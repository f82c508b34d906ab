"""CASSI snapshot compressive imaging, simulated exactly as the official MST `simulation/` code does.

Band i of a cube is dispersed STEP = 2 columns per band toward larger column index, the shifted bands
are summed into one 2-D measurement y, and MST-L is fed shift_back(y * 2 / C) with the shifted mask
"Phi". Unlike the official helpers (which allocate on `.cuda()`), everything stays on the input's
device and dtype, batch-first.
"""

from __future__ import annotations

import torch

from glmha.errors import InputShapeError

STEP = 2  # pixels of dispersion per band (official `step=2`)
MST_SIZE = 256  # MST's internal mask shift-back is derived from 256 // height


def _size(shape: torch.Size | tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def shift(x: torch.Tensor, step: int = STEP) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W + (C-1)*step): band i lands at columns [step*i, step*i + W), zeros elsewhere."""
    if x.dim() != 4:
        raise InputShapeError(f"CASSI shift needs a (B, C, H, W) tensor; got shape {tuple(x.shape)}")
    batch, bands, height, width = x.shape
    out = x.new_zeros(batch, bands, height, width + (bands - 1) * step)
    for i in range(bands):
        out[:, i, :, step * i : step * i + width] = x[:, i]
    return out


def shift_back(y: torch.Tensor, bands: int, step: int = STEP) -> torch.Tensor:
    """(B, H, W') -> (B, bands, H, W' - (bands-1)*step): band i reads columns [step*i, step*i + W)."""
    if y.dim() != 3:
        raise InputShapeError(f"CASSI shift_back needs a (B, H, W') measurement; got shape {tuple(y.shape)}")
    if bands < 1:
        raise InputShapeError(f"CASSI shift_back needs bands >= 1; got {bands}")
    width = y.shape[-1] - (bands - 1) * step
    if width < 1:
        raise InputShapeError(
            f"CASSI measurement of width {y.shape[-1]} is too narrow for {bands} bands at step {step}"
        )
    return torch.stack([y[:, :, step * i : step * i + width] for i in range(bands)], dim=1)  # (B, bands, H, W)


def _check_mask(cube: torch.Tensor, mask2d: torch.Tensor) -> None:
    """Why: the official code broadcasts one fixed 2-D mask over batch and bands; sizes must agree."""
    if cube.dim() != 4:
        raise InputShapeError(f"CASSI cubes must be (B, C, H, W); got shape {tuple(cube.shape)}")
    if mask2d.dim() != 2:
        raise InputShapeError(f"CASSI mask must be 2-D (H, W); got shape {tuple(mask2d.shape)}")
    if tuple(mask2d.shape) != tuple(cube.shape[-2:]):
        raise InputShapeError(
            f"mask is {_size(mask2d.shape)}, the cubes are {_size(cube.shape[-2:])}; they must match"
        )


def measure(cube: torch.Tensor, mask2d: torch.Tensor) -> torch.Tensor:
    """y = sum over bands of shift(mask * cube): (B, C, H, W), (H, W) -> (B, H, W + (C-1)*STEP), no noise."""
    _check_mask(cube, mask2d)
    mask = mask2d.to(device=cube.device, dtype=cube.dtype)
    return shift(cube * mask).sum(dim=1)  # mask (H, W) broadcasts over (B, C)


def mst_inputs(cube: torch.Tensor, mask2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MST-L's ('H', 'Phi') inputs: shift_back(y / C * 2) (B, C, H, W) and shift(M) (B, C, H, W').

    Only 256x256 matches the network's internal shift-back step exactly; smaller squares are
    accepted because the official network runs on them too (with a finer internal step).
    """
    _check_mask(cube, mask2d)
    batch, bands, height, width = cube.shape
    if height != width or height > MST_SIZE:
        raise InputShapeError(
            f"the CASSI model's design hard-codes 256: inputs must be square and at most 256x256; got "
            f"{height}x{width}"
        )
    y = measure(cube, mask2d)
    input_meas = shift_back(y / bands * 2, bands)  # official order: meas / nC * 2
    mask = mask2d.to(device=cube.device, dtype=cube.dtype)
    phi = shift(mask.expand(batch, bands, height, width))  # (H, W) -> (B, C, H, W) -> (B, C, H, W')
    return input_meas, phi
