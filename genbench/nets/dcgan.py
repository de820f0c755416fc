"""DCGAN generator and discriminator (Radford et al. 2016), plus small MLP players for 2-D toy data.

Image nets adapt to the dataset's ``[C, H, W]`` without resizing anything: the generator projects ``z`` to a
small seed (``ceil(H / 2^k) x ceil(W / 2^k)``, at most 7 pixels a side) and doubles it ``k`` times with
strided transposed convolutions, then centre-crops to exactly ``H x W`` (1x8x8 digits: 4x4 seed, one stage;
MNIST 28x28: 7x7 seed, two stages; CIFAR-10 32x32: 4x4 seed, three stages). The discriminator mirrors it
with ``k`` strided convolutions and a linear read-out of one unnormalised score (a logit for the
non-saturating loss, a critic value for hinge / WGAN-GP).

Generator output is ``tanh``, i.e. model space [-1, 1]; mapping to and from pixels is the model's job.

Class-conditional players (``num_classes > 0``; with the default 0 the nets are exactly the unconditional
ones, module for module, so unconditional checkpoints and seeds are unaffected):

* the DCGAN generator replaces every BatchNorm by :class:`ConditionalBatchNorm` (de Vries et al. 2017;
  Miyato & Koyama 2018): normalisation without its own affine, then a per-class gain and bias;
* the MLP generator (2-D toy data, no BatchNorm) reads the one-hot label concatenated to ``z``
  (Mirza & Osindero 2014);
* both discriminators are projection discriminators (Miyato & Koyama 2018):
  ``s(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` with ``phi`` the penultimate features and ``psi`` the
  unconditional linear head; the class embedding is spectrally normalised when the head is.
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


def _check_labels(labels: torch.Tensor | None, n: int, num_classes: int) -> None:
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels given to an unconditional net (num_classes=0)")
    elif labels is None or labels.shape != (n,):
        got = None if labels is None else list(labels.shape)
        raise ValueError(f"a class-conditional net needs labels of shape [{n}], got {got}")


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose affine transform depends on the class: ``gain[y] * BN(x) + bias[y]``.

    The normalisation (``affine=False``, running statistics as usual) is shared by all classes; only the
    per-channel gain and bias are looked up per example. Gains start at 1 and biases at 0, so at
    initialisation this is plain BatchNorm whatever the label.

    Args:
        num_features: channels ``C`` of ``[N, C]`` or ``[N, C, H, W]`` inputs.
        num_classes: number of classes of the labels.
        spatial: ``True`` for ``[N, C, H, W]`` (BatchNorm2d), ``False`` for ``[N, C]`` (BatchNorm1d).
    """

    def __init__(self, num_features: int, num_classes: int, spatial: bool = True) -> None:
        super().__init__()
        self.norm = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], -1) + (1,) * (x.dim() - 2)
        return self.gain(labels).view(shape) * self.norm(x) + self.bias(labels).view(shape)


def _run(layers: nn.Sequential, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """``layers(x)``, handing ``labels`` to the conditional BatchNorms."""
    for layer in layers:
        x = layer(x, labels) if isinstance(layer, ConditionalBatchNorm) else layer(x)
    return x


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
        num_classes: 0 for an unconditional generator; otherwise every BatchNorm is a
            :class:`ConditionalBatchNorm` over this many classes and ``forward`` takes labels.
    """

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int = 64, base_channels: int = 32,
                 num_classes: int = 0) -> None:
        super().__init__()
        c, h, w = _check_image_shape(data_shape)
        self.data_shape = (c, h, w)
        self.latent_dim = latent_dim
        self.num_classes = num_classes

        def batch_norm(channels: int, spatial: bool) -> nn.Module:
            if num_classes:
                return ConditionalBatchNorm(channels, num_classes, spatial)
            return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels)

        k = num_stages(h, w)
        self.seed_hw = (math.ceil(h / 2**k), math.ceil(w / 2**k))
        ch = base_channels * 2**k
        self.seed_channels = ch
        self.project = nn.Sequential(
            nn.Linear(latent_dim, ch * self.seed_hw[0] * self.seed_hw[1], bias=False),
            batch_norm(ch * self.seed_hw[0] * self.seed_hw[1], spatial=False),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        for _ in range(k):
            stages += [
                nn.ConvTranspose2d(ch, ch // 2, kernel_size=4, stride=2, padding=1, bias=False),
                batch_norm(ch // 2, spatial=True),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Conv2d(ch, c, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [N, {self.latent_dim}], got {list(z.shape)}")
        _check_labels(labels, z.shape[0], self.num_classes)
        x = _run(self.project, z, labels).view(z.shape[0], self.seed_channels, *self.seed_hw)
        x = self.to_image(_run(self.stages, x, labels))
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
        spectral_norm: wrap every conv / linear weight (and the class embedding) in spectral
            normalisation (Miyato et al. 2018).
        num_classes: 0 for an unconditional discriminator; otherwise a projection discriminator over this
            many classes, and ``forward`` takes labels.
    """

    def __init__(
        self,
        data_shape: tuple[int, ...],
        base_channels: int = 32,
        norm: str = "batch",
        spectral_norm: bool = False,
        num_classes: int = 0,
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
        self.num_classes = num_classes
        if num_classes:
            self.embed = sn(_projection_embedding(num_classes, ch_in * h * w))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must have shape [N, {', '.join(map(str, self.data_shape))}], got {list(x.shape)}")
        _check_labels(labels, x.shape[0], self.num_classes)
        return _project(self, self.features(x).flatten(1), labels)


def _projection_embedding(num_classes: int, feature_dim: int) -> nn.Embedding:
    """The class embedding of a projection discriminator. Glorot-uniform, as in Miyato & Koyama's code:
    the default N(0, 1) rows would give ``<e_y, phi(x)>`` a scale ~sqrt(feature_dim) times the head's."""
    embed = nn.Embedding(num_classes, feature_dim)
    nn.init.xavier_uniform_(embed.weight)
    return embed


def _project(d: nn.Module, phi: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """``psi(phi) + <embed(y), phi>`` (just ``psi(phi)`` without labels) as a score ``[N]``."""
    s = d.score(phi).squeeze(1)
    if labels is not None:
        s = s + (d.embed(labels) * phi).sum(1)
    return s


class MLPGenerator(nn.Module):
    """``z [N, latent_dim] -> x [N, out_dim]`` (unbounded), for 2-D toy densities; with ``num_classes > 0``
    the one-hot label is concatenated to ``z``."""

    def __init__(self, out_dim: int = 2, latent_dim: int = 64, hidden: int = 128, num_layers: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        d = latent_dim + num_classes
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
            d = hidden
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [N, {self.latent_dim}], got {list(z.shape)}")
        _check_labels(labels, z.shape[0], self.num_classes)
        if labels is not None:
            z = torch.cat([z, nn.functional.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """``x [N, in_dim] -> score [N]`` (unnormalised), for 2-D toy densities; a projection discriminator
    over the last hidden layer with ``num_classes > 0``."""

    def __init__(self, in_dim: int = 2, hidden: int = 128, num_layers: int = 3, spectral_norm: bool = False,
                 num_classes: int = 0) -> None:
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
        self.num_classes = num_classes
        if num_classes:
            self.embed = sn(_projection_embedding(num_classes, d))

    @property
    def score(self) -> nn.Module:
        """The linear head ``psi`` (the last layer of ``net``, where unconditional checkpoints keep it)."""
        return self.net[-1]

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"x must have shape [N, {self.in_dim}], got {list(x.shape)}")
        _check_labels(labels, x.shape[0], self.num_classes)
        return _project(self, self.net[:-1](x), labels)
