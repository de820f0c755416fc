"""Convolutional encoder and decoder with a *spatial* latent, for latent diffusion (plain nn.Modules; the
probability model is models/ldm.py).

Unlike the VAE's nets (:mod:`genbench.nets.vae`), whose latent is a flat vector, the latent here keeps the
image's layout: ``len(channels)`` stride-2 stages take ``[N, C, H, W]`` to ``[N, latent_channels, h, w]``
(MNIST 28x28 -> 14 -> 7 with two stages), so a convolutional UNet can run the diffusion on it (Rombach et
al. 2022). The encoder outputs the mean and log-variance of a diagonal Gaussian q(z|x) per latent element;
the decoder maps z back to ``out_channels`` feature maps at the image's resolution (the parameters of a
per-pixel distribution), cropped to ``H x W`` so that odd sizes work. Same blocks and style as the VAE's nets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genbench.nets.vae import ResBlock, _downsampled

# log-variance range of q(z|x): keeps exp(logvar) finite early in training (as Rombach et al.'s autoencoders)
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def latent_size(image_size: tuple[int, int], stages: int) -> tuple[int, int]:
    """Spatial size ``(h, w)`` of the latent after ``stages`` stride-2 stages (odd sizes round up)."""
    return tuple(_downsampled(int(s), stages) for s in image_size)  # type: ignore[return-value]


class SpatialEncoder(nn.Module):
    """q(z|x) network: image ``[N, C, H, W]`` -> (mean, logvar), each ``[N, latent_channels, h, w]``."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        channels: Sequence[int] = (32, 64),
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if not channels or latent_channels < 1:
            raise ValueError("channels must name at least one stage and latent_channels must be >= 1")
        channels = [int(c) for c in channels]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        prev = channels[0]
        for ch in channels:
            layers.append(nn.Conv2d(prev, ch, 3, stride=2, padding=1))
            layers.extend(ResBlock(ch) for _ in range(num_res_blocks))
            prev = ch
        layers.extend([nn.ELU(), nn.Conv2d(prev, 2 * latent_channels, 3, padding=1)])
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.body(x).chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class SpatialDecoder(nn.Module):
    """p(x|z) network: ``[N, latent_channels, h, w]`` -> ``[N, out_channels, H, W]`` distribution parameters."""

    def __init__(
        self,
        out_channels: int,
        image_size: tuple[int, int],
        latent_channels: int,
        channels: Sequence[int] = (32, 64),
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if not channels or latent_channels < 1:
            raise ValueError("channels must name at least one stage and latent_channels must be >= 1")
        channels = [int(c) for c in channels][::-1]  # deepest stage first
        self.image_size = tuple(int(s) for s in image_size)
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, channels[0], 3, padding=1)]
        # Mirror of the encoder: residual blocks at a stage's width, then upsample to the next (shallower) one.
        for ch, next_ch in zip(channels, [*channels[1:], channels[-1]], strict=True):
            layers.extend(ResBlock(ch) for _ in range(num_res_blocks))
            layers.extend([nn.ELU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, next_ch, 3, padding=1)])
        layers.extend([nn.ELU(), nn.Conv2d(channels[-1], out_channels, 3, padding=1)])
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.body(z)
        return out[..., : self.image_size[0], : self.image_size[1]]
