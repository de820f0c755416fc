"""Convolutional encoder and decoder of the VAE (plain nn.Modules; the probability model is models/vae.py).

The encoder maps an image in model space ``[N, C, H, W]`` to the mean and log-variance of a diagonal
Gaussian over ``latent_dim`` latents. The decoder maps ``z`` to ``out_channels`` feature maps at the
image's resolution (the parameters of a per-pixel distribution). Each of the ``len(channels)`` stages
halves (encoder) or doubles (decoder) the resolution; odd sizes round up on the way down and the decoder
crops its output back to ``H x W``, so any image size works (8x8 digits, 28x28 MNIST, 32x32 CIFAR-10).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _downsampled(size: int, stages: int) -> int:
    for _ in range(stages):
        size = (size + 1) // 2  # conv 3x3, stride 2, padding 1
    return size


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(act(conv(act(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ELU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """q(z|x) network: image -> (mean, logvar), each ``[N, latent_dim]``."""

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one stage")
        channels = [int(c) for c in channels]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        prev = channels[0]
        for ch in channels:
            layers.append(nn.Conv2d(prev, ch, 3, stride=2, padding=1))
            layers.extend(ResBlock(ch) for _ in range(num_res_blocks))
            prev = ch
        layers.append(nn.ELU())
        self.features = nn.Sequential(*layers)
        h, w = (_downsampled(s, len(channels)) for s in image_size)
        self.head = nn.Linear(prev * h * w, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.features(x).flatten(1)).chunk(2, dim=1)
        return mean, logvar


class ConvDecoder(nn.Module):
    """p(x|z) network: ``[N, latent_dim]`` -> ``[N, out_channels, H, W]`` distribution parameters."""

    def __init__(
        self,
        out_channels: int,
        image_size: tuple[int, int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("channels must name at least one stage")
        channels = [int(c) for c in channels][::-1]  # deepest stage first
        self.image_size = tuple(int(s) for s in image_size)
        self.low_shape = (channels[0], *(_downsampled(s, len(channels)) for s in image_size))
        self.head = nn.Linear(latent_dim, channels[0] * self.low_shape[1] * self.low_shape[2])
        layers: list[nn.Module] = []
        # Mirror of the encoder: residual blocks at a stage's width, then upsample to the next (shallower) one.
        for ch, next_ch in zip(channels, [*channels[1:], channels[-1]], strict=True):
            layers.extend(ResBlock(ch) for _ in range(num_res_blocks))
            layers.extend([nn.ELU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, next_ch, 3, padding=1)])
        layers.extend([nn.ELU(), nn.Conv2d(channels[-1], out_channels, 3, padding=1)])
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(z.shape[0], *self.low_shape)
        out = self.body(h)
        return out[..., : self.image_size[0], : self.image_size[1]]
