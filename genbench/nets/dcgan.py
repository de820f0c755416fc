"""DCGAN generator and discriminator (Radford et al. 2016), plus small MLP players for 2-D toy data.

Image nets adapt to the dataset's ``[C, H, W]`` without resizing anything: the generator projects ``z`` to a
small seed (``ceil(H / 2^k) x ceil(W / 2^k)``, at most 7 pixels a side) and doubles it ``k`` times with
strided transposed convolutions, then centre-crops to exactly ``H x W`` (1x8x8 digits: 4x4 seed, one stage;
MNIST 28x28: 7x7 seed, two stages; CIFAR-10 32x32: 4x4 seed, three stages). The discriminator mirrors it
with ``k`` strided convolutions and a linear read-out of one unnormalised score (a logit for the
non-saturating loss, a critic value for hinge / WGAN-GP).

Generator output is ``tanh``, i.e. model space [-1, 1]; mapping to and from pixels is the model's job.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

MAX_SEED_SIZE = 7
D_NORMS = ("batch", "layer", "none")


def num_stages(height: int, width: int) -> int:
    """Fewest doublings ``k`` such that the seed ``ceil(size / 2^k)`` is at most :data:`MAX_SEED_SIZE`."""
    k = 0
    while math.ceil(max(height, width) / 2**k) > MAX_SEED_SIZE:
        k += 1
    return max(k, 1)


def _check_image_shape(data_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(data_shape) != 3 or min(data_shape) <= 0:
        raise ValueError(f"image nets need data_shape [C, H, W], got {list(data_shape)}")
    c, h, w = (int(s) for s in data_shape)
    return c, h, w


class DCGANGenerator(nn.Module):
    """``z [N, latent_dim] -> x [N, C, H, W]`` in [-1, 1].

    Args:
        data_shape: ``[C, H, W]`` of the dataset.
        latent_dim: size of ``z``.
        base_channels: channels of the last (full-resolution) stage; each earlier stage has twice as many.
    """

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int = 64, base_channels: int = 32) -> None:
        super().__init__()
        c, h, w = _check_image_shape(data_shape)
        self.data_shape = (c, h, w)
        self.latent_dim = latent_dim
        k = num_stages(h, w)
        self.seed_hw = (math.ceil(h / 2**k), math.ceil(w / 2**k))
        ch = base_channels * 2**k
        self.seed_channels = ch
        self.project = nn.Sequential(
            nn.Linear(latent_dim, ch * self.seed_hw[0] * self.seed_hw[1], bias=False),
            nn.BatchNorm1d(ch * self.seed_hw[0] * self.seed_hw[1]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        for _ in range(k):
            stages += [
                nn.ConvTranspose2d(ch, ch // 2, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Conv2d(ch, c, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [N, {self.latent_dim}], got {list(z.shape)}")
        x = self.project(z).view(z.shape[0], self.seed_channels, *self.seed_hw)
        x = self.to_image(self.stages(x))
        _, h, w = self.data_shape
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        return torch.tanh(x[:, :, top : top + h, left : left + w])


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # layer norm over (C, H, W), per example: valid with a gradient penalty
    return nn.Identity()


class DCGANDiscriminator(nn.Module):
    """``x [N, C, H, W] -> score [N]`` (unnormalised).

    Args:
        data_shape: ``[C, H, W]`` of the dataset.
        base_channels: channels of the first (full-resolution) stage; each later stage has twice as many.
        norm: ``batch`` (DCGAN), ``layer`` (per-example, as WGAN-GP requires) or ``none``; never on the
            first stage.
        spectral_norm: wrap every conv / linear weight in spectral normalisation (Miyato et al. 2018).
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        base_channels: int = 32,
        norm: str = "batch",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if norm not in D_NORMS:
            raise ValueError(f"norm must be one of {D_NORMS}, got {norm!r}")
        c, h, w = _check_image_shape(data_shape)
        self.data_shape = (c, h, w)
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        ch_in, ch = c, base_channels
        for i in range(num_stages(h, w)):
            layers.append(sn(nn.Conv2d(ch_in, ch, kernel_size=4, stride=2, padding=1, bias=i == 0 or norm != "batch")))
            if i > 0:
                layers.append(_norm(norm, ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch_in, ch = ch, ch * 2
            h, w = h // 2, w // 2  # kernel 4, stride 2, padding 1: floor(size / 2)
        self.features = nn.Sequential(*layers)
        self.score = sn(nn.Linear(ch_in * h * w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must have shape [N, {', '.join(map(str, self.data_shape))}], got {list(x.shape)}")
        return self.score(self.features(x).flatten(1)).squeeze(1)


class MLPGenerator(nn.Module):
    """``z [N, latent_dim] -> x [N, out_dim]`` (unbounded), for 2-D toy densities."""

    def __init__(self, out_dim: int = 2, latent_dim: int = 64, hidden: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        layers: list[nn.Module] = []
        d = latent_dim
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [N, {self.latent_dim}], got {list(z.shape)}")
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """``x [N, in_dim] -> score [N]`` (unnormalised), for 2-D toy densities."""

    def __init__(self, in_dim: int = 2, hidden: int = 128, num_layers: int = 3, spectral_norm: bool = False) -> None:
        super().__init__()
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        self.in_dim = in_dim
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers):
            layers += [sn(nn.Linear(d, hidden)), nn.LeakyReLU(0.2, inplace=True)]
            d = hidden
        layers.append(sn(nn.Linear(d, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must have shape [N, {self.in_dim}], got {list(x.shape)}")
        return self.net(x).squeeze(1)
