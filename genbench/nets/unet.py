"""The DDPM UNet (Ho et al. 2020, appendix B): a plain ``nn.Module`` mapping ``(x_t, t[, y])`` to an output.

Wide-ResNet blocks with GroupNorm and a projected timestep embedding, self-attention at chosen
resolutions, stride-2 convolutions down and nearest-neighbour upsampling + convolution up. Upsampling
goes to the exact size of the matching skip connection, so odd sizes work without padding
(MNIST: 28 -> 14 -> 7 -> 4 and back). With ``base_channels=128, channel_mults=(1, 2, 2, 2),
num_res_blocks=2, attention_resolutions=(16,)`` on 3x32x32 it is Ho et al.'s 35.7M-parameter CIFAR-10 net.

An optional class embedding is added to the timestep embedding; label ``num_classes`` is the "null"
label used for classifier-free guidance (Ho & Salimans 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest number of GroupNorm groups <= ``max_groups`` that divides ``channels``."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N, dim]`` of (possibly fractional) timesteps (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + projected embedding, GroupNorm-SiLU-dropout-conv (zero-initialised), residual."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, max_groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(group_count(in_channels, max_groups), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(group_count(out_channels, max_groups), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, residual (output projection zero-initialised)."""

    def __init__(self, channels: int, num_heads: int, max_groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(group_count(channels, max_groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: size s -> ceil(s / 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """DDPM UNet.

    Args:
        in_channels: channels of x_t.
        out_channels: channels of the output (2x ``in_channels`` for a learned variance).
        image_size: height of the input, used to place attention by resolution.
        base_channels: channels of the first level (the timestep embedding has 4x as many).
        channel_mults: channel multiplier of each level; the spatial size halves between levels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: spatial sizes (heights) at which a self-attention block follows each
            residual block; the middle block always has one.
        dropout: dropout probability inside the residual blocks.
        num_heads: attention heads.
        num_classes: 0 for an unconditional net; otherwise labels 0..num_classes-1 plus the null label
            ``num_classes``.
        max_groups: GroupNorm groups (the largest divisor of the channels up to this number).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        image_size: int = 28,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (14,),
        dropout: float = 0.1,
        num_heads: int = 1,
        num_classes: int = 0,
        max_groups: int = 32,
    ) -> None:
        super().__init__()
        if base_channels < 1 or not channel_mults or min(channel_mults) < 1 or num_res_blocks < 1:
            raise ValueError("UNet needs base_channels >= 1, a non-empty channel_mults of positive ints, num_res_blocks >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        channels, resolution = base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                block = nn.ModuleList([ResBlock(channels, out, emb_dim, dropout, max_groups)])
                if resolution in attention_resolutions:
                    block.append(AttentionBlock(out, num_heads, max_groups))
                self.down.append(block)
                channels = out
                skip_channels.append(channels)
            if level != len(channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(channels)]))
                skip_channels.append(channels)
                resolution = (resolution + 1) // 2

        self.mid = nn.ModuleList([
            ResBlock(channels, channels, emb_dim, dropout, max_groups),
            AttentionBlock(channels, num_heads, max_groups),
            ResBlock(channels, channels, emb_dim, dropout, max_groups),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                out = base_channels * mult
                block = nn.ModuleList([ResBlock(channels + skip_channels.pop(), out, emb_dim, dropout, max_groups)])
                if resolution in attention_resolutions:
                    block.append(AttentionBlock(out, num_heads, max_groups))
                self.up.append(block)
                channels = out
            if level != 0:
                self.up.append(nn.ModuleList([Upsample(channels)]))
                resolution = self._level_resolution(image_size, level - 1)

        self.norm_out = nn.GroupNorm(group_count(channels, max_groups), channels)
        self.conv_out = zero_init(nn.Conv2d(channels, out_channels, 3, padding=1))

    @staticmethod
    def _level_resolution(image_size: int, level: int) -> int:
        resolution = image_size
        for _ in range(level):
            resolution = (resolution + 1) // 2
        return resolution

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[N, C, H, W]``; ``t``: ``[N]`` timesteps; ``y``: ``[N]`` labels (``num_classes`` = null) or None."""
        emb = self.time_embed(timestep_embedding(t, self.base_channels))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.int64, device=x.device)
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise ValueError("labels given to an unconditional UNet (num_classes=0)")
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            for layer in block:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for block in self.up:
            if isinstance(block[0], Upsample):
                h = block[0](h, hs[-1].shape[-2:])
                continue
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in block:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
