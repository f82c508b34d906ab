"""Overlapping tiles blended without seams: whole-image restoration in the memory of one tile.

Why tiles: activation memory grows with the pixels a forward pass sees (a 1024x1024 Restormer pass needs
gigabytes), so large images run out of memory. Tiles of a fixed size keep the model's memory flat; only
the input and the accumulated output grow with the image.

How they are blended: each tile's output is weighted by a window that is 1 in its middle, 0 in a margin of
`overlap // 4` pixels along every edge it shares with a neighbour, and rises linearly in between; the image
is the weighted sum divided by the summed weights. Two consequences users rely on:

- exact where the model is local: a model whose output at a pixel depends only on inputs within
  `overlap // 4` pixels gives exactly the whole-image result (weights are zero where a tile's edge could
  change its output), so tiling changes nothing but memory;
- no seams where it is not: channel-wise attention pools over the whole tile, so neighbouring tiles give
  slightly different values; the linear cross-fade turns that difference into a gradual transition over
  `overlap / 2` pixels instead of a step.

Tiles start at multiples of the model's size multiple (sides are padded to it first), so each tile sees the
down-sampling grid of the whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glmha.errors import GlmhaError


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) on the bottom and right to multiples of `multiple`, as the official test scripts do:
    reflect, or replicate where the pad is not shorter than the side (reflect cannot). Returns the padded
    batch and the original (H, W) for `crop_to`."""
    if multiple < 1:
        raise GlmhaError(f"pad multiple must be at least 1, got {multiple}")
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode="reflect" if pad_w < width else "replicate")  # (B, C, H, W')
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode="reflect" if pad_h < height else "replicate")  # (B, C, H', W')
    return x, (int(height), int(width))


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple`: keep the top-left (H, W) of (..., H', W')."""
    height, width = size
    return x[..., :height, :width]


@dataclass(frozen=True)
class TileSettings:
    """`tile` and `overlap` in pixels, checked against the model's size multiple."""

    tile: int
    overlap: int

    def check(self, multiple: int) -> None:
        if self.tile < 1 or self.tile % multiple:
            raise GlmhaError(f"--tile must be a positive multiple of {multiple} for this model; got {self.tile}")
        if self.overlap < 0:
            raise GlmhaError(f"--overlap must be at least 0; got {self.overlap}")
        if self.overlap >= self.tile:
            raise GlmhaError(f"--overlap ({self.overlap}) must be smaller than --tile ({self.tile})")
        if self.tile - self.overlap < multiple:
            raise GlmhaError(f"--tile minus --overlap must be at least the model's multiple {multiple}; got "
                             f"{self.tile} - {self.overlap}")


def tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Where tiles of `tile` pixels start along a side of `length` (a multiple of `multiple`): every stride,
    the stride being `tile - overlap` rounded down to the multiple, and a last tile flush with the end.
    One tile of the whole length when the side is not longer than a tile."""
    if length <= tile:
        return [0]
    stride = max(multiple, (tile - overlap) // multiple * multiple)
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def edge_ramp(size: int, overlap: int, *, rise: bool, fall: bool) -> torch.Tensor:
    """(size,) float64 weights along one side of a tile: 0 for `overlap // 4` pixels at an edge shared
    with a neighbour, then a linear rise to 1 over `overlap - 2 * (overlap // 4)` pixels; 1 at image edges
    (`rise` / `fall` say whether the leading / trailing edge is shared)."""
    margin = overlap // 4
    span = max(1, overlap - 2 * margin)
    distance = torch.arange(size, dtype=torch.float64)  # from the leading edge
    weights = torch.ones(size, dtype=torch.float64)
    if rise:
        weights = torch.minimum(weights, ((distance + 0.5 - margin) / span).clamp(0.0, 1.0))
    if fall:
        weights = torch.minimum(weights, ((size - 1 - distance + 0.5 - margin) / span).clamp(0.0, 1.0))
    return weights


@dataclass(frozen=True)
class Tile:
    top: int
    left: int
    height: int
    width: int
    row_weights: torch.Tensor  # (height,) float64 blend ramp down the tile
    column_weights: torch.Tensor  # (width,) float64 blend ramp across it

    def weight(self) -> torch.Tensor:
        """(height, width) float32 blend window, made when needed: kept for every tile at once, the windows
        would take memory in proportion to the image."""
        return (self.row_weights[:, None] * self.column_weights[None, :]).to(torch.float32)  # (h, 1) * (1, w)


def plan_tiles(height: int, width: int, settings: TileSettings, multiple: int) -> list[Tile]:
    """The tiles covering a (height, width) image whose sides are multiples of `multiple`."""
    settings.check(multiple)
    tops = tile_starts(height, settings.tile, settings.overlap, multiple)
    lefts = tile_starts(width, settings.tile, settings.overlap, multiple)
    tile_h, tile_w = min(height, settings.tile), min(width, settings.tile)
    tiles = []
    for top in tops:
        rows = edge_ramp(tile_h, settings.overlap, rise=top > 0, fall=top + tile_h < height)
        for left in lefts:
            columns = edge_ramp(tile_w, settings.overlap, rise=left > 0, fall=left + tile_w < width)
            tiles.append(Tile(top, left, tile_h, tile_w, rows, columns))
    return tiles


def run_tiled(forward: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, settings: TileSettings, *,
              multiple: int, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`forward` applied to (B, C, H, W) `image` tile by tile and blended; H and W must be multiples of
    `multiple` (pad first). The output is float32 (B, C_out, H, W) on the image's device; `forward` must keep
    the spatial size. `on_tile(done, total)` is called after each tile (progress bars)."""
    batch, _, height, width = image.shape
    if height % multiple or width % multiple:
        raise GlmhaError(f"tiled input of {height}x{width} is not padded to the model's multiple {multiple}")
    tiles = plan_tiles(height, width, settings, multiple)
    total: torch.Tensor | None = None
    weights = torch.zeros(height, width, dtype=torch.float32, device=image.device)
    for done, tile in enumerate(tiles, start=1):
        rows, columns = slice(tile.top, tile.top + tile.height), slice(tile.left, tile.left + tile.width)
        out = forward(image[:, :, rows, columns]).float()  # (B, C_out, tile_h, tile_w)
        if out.shape[-2:] != (tile.height, tile.width):
            raise GlmhaError(f"tiling needs a model whose output has its input's size; a {tile.height}x"
                             f"{tile.width} tile gave {out.shape[-2]}x{out.shape[-1]}")
        if total is None:
            total = torch.zeros(batch, out.shape[1], height, width, dtype=torch.float32, device=image.device)
        weight = tile.weight().to(image.device)
        total[:, :, rows, columns] += out * weight  # (tile_h, tile_w) broadcasts over (B, C_out)
        weights[rows, columns] += weight
        del out
        if on_tile is not None:
            on_tile(done, len(tiles))
    assert total is not None  # plan_tiles always gives at least one tile
    return total.div_(weights)  # (B, C_out, H, W) / (H, W), in place: no second image-sized buffer
