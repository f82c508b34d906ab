"""Building blocks shared by MST++ and MST (Cai et al., CVPR/NTIRE 2022): spectral-wise MSA.

The blocks work channels-last like the official code, have no LayerNorm before the attention, and
form K^ Q^T with the softmax over the q index: in this family the projection named `to_q` plays the
key and `to_k` the query. Parameter names follow the official state dicts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glmha.archs.base import CSALayer, count_indices
from glmha.errors import ArchitectureError, InputShapeError

SHIFT_REFERENCE = 256  # the official shift-back derives its step from 256 // height
SHIFT_STEP = 2  # dispersion of the CASSI simulation, pixels per band at 256x256


def shift_back_offsets(height: int, channels: int) -> list[int]:
    """Column where channel i starts in the official mask shift-back: int(i * 2 / (256 // H)^2)."""
    if height > SHIFT_REFERENCE:
        raise InputShapeError(f"MST needs inputs of at most 256x256; got height {height}")
    down = SHIFT_REFERENCE // height
    step = float(SHIFT_STEP) / float(down * down)
    return [int(step * i) for i in range(channels)]


def unet_block_counts(keys: list[str], prefix: str) -> tuple[int, ...]:
    """Blocks per encoder level, then in the bottleneck, of the U-Net whose keys start with prefix."""
    stage = count_indices(keys, f"{prefix}encoder_layers")
    blocks = [count_indices(keys, f"{prefix}encoder_layers.{level}.0.blocks") for level in range(stage)]
    return (*blocks, count_indices(keys, f"{prefix}bottleneck.blocks"))


def positional_branch(channels: int) -> nn.Sequential:
    """MS-MSA's positional embedding of V_in: depthwise 3x3, GELU, depthwise 3x3 (`pos_emb.0/.2`)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        nn.GELU(),
        nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
    )


class SpectralFeedForward(nn.Module):
    """1x1 to 4C, GELU, depthwise 3x3, GELU, 1x1 back; channels-last in and out."""

    def __init__(self, channels: int, mult: int = 4) -> None:
        super().__init__()
        hidden = channels * mult
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (b, h, w, C)


class PreNorm(nn.Module):
    def __init__(self, channels: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class SpectralAttention(CSALayer):
    """MS-MSA: per head softmax(rescale * K^ Q^T) V, plus a depthwise positional branch on V.

    Input and output are channels-last (b, h, w, C).
    """

    channels_last = True

    def __init__(self, channels: int, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads
        inner = head_dim * num_heads
        if inner != channels:
            raise ValueError("spectral attention needs head_dim * heads == channels")
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.rescale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.proj = nn.Linear(inner, channels, bias=True)
        self.pos_emb = positional_branch(channels)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x_in.shape
        x = x_in.reshape(b, h * w, c)  # (b, N, C)
        v_inp = self.to_v(x)  # (b, N, C)
        out = self._attend(self.to_k(x), self.to_q(x), v_inp, b)  # (b, N, C)
        return out.view(b, h, w, c) + self._positional(v_inp, b, h, w)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, b: int) -> torch.Tensor:
        """Channel attention; `query` is the to_k output, `key` the to_q output (b, N, C each)."""
        n = query.shape[1]
        heads = self.num_heads
        query = F.normalize(query.reshape(b, n, heads, -1).permute(0, 2, 3, 1), dim=-1)  # (b, heads, d, N)
        key = F.normalize(key.reshape(b, n, heads, -1).permute(0, 2, 3, 1), dim=-1)  # (b, heads, d', N)
        value = value.reshape(b, n, heads, -1).permute(0, 2, 3, 1)  # (b, heads, d', N)
        out = self.attend_channels(query, key, value, self.rescale)  # (b, heads, d, N)
        out = out.permute(0, 3, 1, 2).reshape(b, n, -1)  # (b, N, heads * d)
        return self.proj(out)

    def _positional(self, v_inp: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        v_img = v_inp.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (b, C, h, w)
        return self.pos_emb(v_img).permute(0, 2, 3, 1)  # (b, h, w, C)


class MaskGuidance(nn.Module):
    """MST's mask-guided mechanism: refine the shifted mask, then shift each band back."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=True)
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=True)
        self.depth_conv = nn.Conv2d(channels, channels, 5, padding=2, groups=channels, bias=True)

    def forward(self, mask_shift: torch.Tensor) -> torch.Tensor:
        """(b, C, H, W') shifted mask -> (b, C, H, H) guidance map."""
        mask_shift = self.conv1(mask_shift)
        gate = torch.sigmoid(self.depth_conv(self.conv2(mask_shift)))
        mask_shift = mask_shift * gate + mask_shift
        _, channels, height, width = mask_shift.shape
        offsets = shift_back_offsets(height, channels)
        if width < height + offsets[-1]:
            raise InputShapeError(
                f"MST mask too narrow: {channels} bands at height {height} need width "
                f">= {height + offsets[-1]}, got {width}"
            )
        bands = [mask_shift[:, i, :, o:o + height] for i, o in enumerate(offsets)]
        return torch.stack(bands, dim=1)  # (b, C, H, H)


class MaskedSpectralAttention(SpectralAttention):
    """MST's MS-MSA: V is multiplied channel by channel by the mask guidance (batch element 0)."""

    def __init__(self, channels: int, head_dim: int, num_heads: int) -> None:
        super().__init__(channels, head_dim, num_heads)
        self.mm = MaskGuidance(channels)

    def forward(self, x_in: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x_in (b, h, w, C); mask (b, h, W', C) channels-last, only element 0 is used."""
        b, h, w, c = x_in.shape
        x = x_in.reshape(b, h * w, c)  # (b, N, C)
        v_inp = self.to_v(x)  # (b, N, C)
        guide = self.mm(mask[:1].permute(0, 3, 1, 2))  # (1, C, h, h)
        guide = guide.permute(0, 2, 3, 1).reshape(1, h * w, c)  # (1, N, C)
        out = self._attend(self.to_k(x), self.to_q(x), v_inp * guide, b)  # (b, N, C)
        return out.view(b, h, w, c) + self._positional(v_inp, b, h, w)


class SpectralBlocks(nn.Module):
    """MSAB: `num_blocks` x (attention + residual, pre-normed feed-forward + residual)."""

    def __init__(self, channels: int, head_dim: int, num_heads: int, num_blocks: int, masked: bool) -> None:
        super().__init__()
        attention = MaskedSpectralAttention if masked else SpectralAttention
        self.blocks = nn.ModuleList(
            nn.ModuleList([
                attention(channels, head_dim, num_heads),
                PreNorm(channels, SpectralFeedForward(channels)),
            ])
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (b, h, w, C)
        # `block_output` below relies on this order: the block's output is ff's input + ff's output
        mask_last = None if mask is None else mask.permute(0, 2, 3, 1)  # (b, h, W', C)
        for attn, ff in self.blocks:
            x = (attn(x) if mask_last is None else attn(x, mask_last)) + x
            x = ff(x) + x
        return x.permute(0, 3, 1, 2)  # (b, C, h, w)


def block_output(csa_name: str) -> tuple[str, bool]:
    """The MSAB block around `...blocks.<i>.0` (attention) ends after its feed-forward `...blocks.<i>.1`,
    whose residual is added outside any module, so a hook adds that module's input back."""
    parent, _, leaf = csa_name.rpartition(".")
    if leaf != "0" or not parent.split(".")[-1].isdigit():
        raise ArchitectureError(f"{csa_name} is not the attention of a spectral block")
    return f"{parent}.1", True


class SpectralUNet(nn.Module):
    """The MST U-Net: embedding, `stage` encoder levels, bottleneck, decoder, mapping + input.

    With `masked=True` (MST for snapshot compressive imaging) every level also down-samples the
    mask with its own conv and the attention is mask-guided; the embedding is followed by
    LeakyReLU(0.1). MST++ uses the unmasked form as each of its stages.
    """

    def __init__(
        self, in_dim: int, out_dim: int, dim: int, num_blocks: tuple[int, ...], masked: bool
    ) -> None:
        super().__init__()
        self.masked = masked
        self.stage = stage = len(num_blocks) - 1
        self.embedding = nn.Conv2d(in_dim, dim, 3, padding=1, bias=False)
        self.encoder_layers = nn.ModuleList()
        width = dim
        for level in range(stage):
            layers = [
                SpectralBlocks(width, dim, width // dim, num_blocks[level], masked),
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
            ]
            if masked:
                layers.append(nn.Conv2d(width, width * 2, 4, 2, 1, bias=False))
            self.encoder_layers.append(nn.ModuleList(layers))
            width *= 2
        self.bottleneck = SpectralBlocks(width, dim, width // dim, num_blocks[-1], masked)
        self.decoder_layers = nn.ModuleList()
        for level in range(stage):
            self.decoder_layers.append(nn.ModuleList([
                nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2),
                nn.Conv2d(width, width // 2, 1, bias=False),
                SpectralBlocks(width // 2, dim, width // 2 // dim, num_blocks[stage - 1 - level], masked),
            ]))
            width //= 2
        self.mapping = nn.Conv2d(dim, out_dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        fea = self.embedding(x)
        if self.masked:
            fea = F.leaky_relu(fea, 0.1)
        skips, masks = [], []
        for layers in self.encoder_layers:
            fea = layers[0](fea, mask)
            skips.append(fea)
            masks.append(mask)
            fea = layers[1](fea)
            if self.masked:
                mask = layers[2](mask)
        fea = self.bottleneck(fea, mask)
        for i, (upsample, fuse, blocks) in enumerate(self.decoder_layers):
            level = self.stage - 1 - i
            fea = fuse(torch.cat([upsample(fea), skips[level]], dim=1))
            fea = blocks(fea, masks[level])
        return self.mapping(fea) + x
