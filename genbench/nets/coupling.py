"""Affine coupling flows (Dinh et al. 2017, "Density estimation using Real NVP").

Building blocks, each an invertible map returning ``(y, logdet)`` with ``logdet`` the per-example
log|det dy/dx| (``[N]``) and an ``inverse``:

* :class:`AffineCoupling`: ``y = b*x + (1-b)*(x*exp(s(b*x)) + t(b*x))`` with a checkerboard mask ``b``
  or a channel-wise split; the scale is bounded, ``s = scale * tanh(raw)`` (a learnt per-channel scale);
* :class:`ActNorm`: per-channel affine normalisation with data-dependent initialisation (Kingma &
  Dhariwal 2018), used after every coupling where Real NVP used batch normalisation: it normalises like
  batch norm on the first batch but is a fixed affine map afterwards, so training and evaluation compute the
  same function (no running statistics) and its log-det is ``H*W*sum(log_scale)``;
* :func:`squeeze` / :func:`unsqueeze`: ``[C, H, W] <-> [4C, H/2, W/2]`` (volume preserving);
* :class:`RealNVPFlow`: the multi-scale architecture. Each scale but the last runs 3 checkerboard
  couplings, a squeeze, 3 channel-wise couplings, then factors out half of its channels; the last scale
  runs 4 checkerboard couplings. The latent ``z`` is returned flat, ``[N, C*H*W]``;
* :class:`MLPCouplingFlow`: the same coupling with MLP ``s``/``t`` networks for 2-D points.

The ``s``/``t`` networks are ResNets of weight-normalised convolutions (:class:`WNConv2d`) whose last layer
starts at zero, so each coupling starts as the identity.

Conditioning: built with ``context_channels = E > 0``, every coupling's ``s``/``t`` network also receives a
per-example context vector ``c [N, E]`` (a class one-hot for a class-conditional flow), broadcast over the
pixels as ``E`` extra input channels (concatenated to the MLP input for points). The map stays a coupling in
``x`` for every fixed ``c``, so inverse and log-determinant are unchanged; ``forward``/``inverse`` then take
``context``. With ``context_channels = 0`` (the default) nothing is added and the layers are built exactly as
without conditioning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASK_CHECKERBOARD = "checkerboard"
MASK_CHANNEL = "channel"


# ---------------------------------------------------------------- reshaping and masks
def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W] -> [N, 4C, H/2, W/2]``: each 2x2 patch becomes 4 channels."""
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"squeeze needs an even height and width, got {h}x{w}")
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squeeze`: ``[N, 4C, H, W] -> [N, C, 2H, 2W]``."""
    n, c4, h, w = x.shape
    if c4 % 4:
        raise ValueError(f"unsqueeze needs a multiple of 4 channels, got {c4}")
    x = x.view(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c4 // 4, 2 * h, 2 * w)


def context_maps(context: torch.Tensor | None, like: torch.Tensor) -> list[torch.Tensor]:
    """``[context [N, E, H, W]]`` broadcast over the pixels of ``like`` (an empty list without context), for
    concatenation to the input of an s/t network."""
    if context is None:
        return []
    h, w = like.shape[2:]
    return [context.to(like.dtype)[:, :, None, None].expand(-1, -1, h, w)]


def checkerboard_mask(height: int, width: int, parity: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[1, 1, H, W]`` mask, 1 where ``(i + j) % 2 == parity`` (the conditioning pixels)."""
    i = torch.arange(height, device=device).view(-1, 1)
    j = torch.arange(width, device=device).view(1, -1)
    return ((i + j) % 2 == parity).to(dtype).view(1, 1, height, width)


# ---------------------------------------------------------------- s/t networks
class WNConv2d(nn.Module):
    """Weight-normalised convolution (Salimans & Kingma 2016): ``w = g * v / ||v||`` per output channel.

    ``weight_g`` is the weight *scale* parameter that Real NVP's L2 regularisation acts on.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, zero_init: bool = False) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        v = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        self.weight_v = nn.Parameter(v)
        g = torch.zeros(out_channels) if zero_init else v.flatten(1).norm(dim=1)
        self.weight_g = nn.Parameter(g)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        w = v * (self.weight_g / v.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
        return F.conv2d(x, w, self.bias, padding=self.padding)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(conv(relu(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = WNConv2d(channels, channels, 3)
        self.conv2 = WNConv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class STResNet(nn.Module):
    """ResNet mapping the conditioning half to ``(s, t)`` for ``out_channels`` channels; ``s`` is bounded."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__()
        self.conv_in = WNConv2d(in_channels, mid_channels, 3)
        self.blocks = nn.ModuleList(ResidualBlock(mid_channels) for _ in range(num_blocks))
        self.conv_out = WNConv2d(mid_channels, 2 * out_channels, 3, zero_init=True)
        self.s_scale = nn.Parameter(torch.ones(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        s_raw, t = self.conv_out(F.relu(h)).chunk(2, dim=1)
        return self.s_scale * torch.tanh(s_raw), t


# ---------------------------------------------------------------- invertible layers
class ActNorm(nn.Module):
    """``y = (x + bias) * exp(log_scale)`` per channel (per feature for ``[N, D]`` input).

    Initialised from the first batch seen in training mode so that ``y`` has zero mean and unit variance
    per channel (averaged over ranks under torch.distributed); a plain learnt affine map afterwards.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        mean_sq = (x * x).mean(dim=dims)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stats = torch.stack([mean, mean_sq])
            torch.distributed.all_reduce(stats)
            mean, mean_sq = stats / torch.distributed.get_world_size()
        std = (mean_sq - mean * mean).clamp_min(0.0).sqrt()
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._initialize(x.detach().float())
        y = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        spatial = x[0, 0].numel()
        logdet = (self.log_scale.sum() * spatial).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self._view(self.log_scale, y)) - self._view(self.bias, y)


class AffineCoupling(nn.Module):
    """Affine coupling with a checkerboard mask or a channel-wise split (Dinh et al. 2017, eqs. 7-9).

    Args:
        channels: channels of the input.
        mask_type: ``"checkerboard"`` or ``"channel"``.
        parity: which half conditions (checkerboard: pixels with ``(i+j) % 2 == parity``; channel: the
            first half when 0, the second when 1).
        mid_channels, num_blocks: width and depth of the ResNet that outputs ``s`` and ``t``.
        context_channels: size ``E`` of the per-example context ``[N, E]`` the s/t network also sees (0: none).
    """

    def __init__(self, channels: int, mask_type: str, parity: int, mid_channels: int, num_blocks: int,
                 context_channels: int = 0) -> None:
        super().__init__()
        if mask_type not in (MASK_CHECKERBOARD, MASK_CHANNEL):
            raise ValueError(f"mask_type must be {MASK_CHECKERBOARD!r} or {MASK_CHANNEL!r}, got {mask_type!r}")
        if mask_type == MASK_CHANNEL and channels % 2:
            raise ValueError(f"a channel-wise coupling needs an even number of channels, got {channels}")
        self.mask_type = mask_type
        self.parity = int(parity)
        self.context_channels = int(context_channels)
        if mask_type == MASK_CHECKERBOARD:
            # the network sees the masked input plus the mask itself (so it knows which pixels are given)
            self.net = STResNet(channels + 1 + self.context_channels, mid_channels, channels, num_blocks)
        else:
            self.net = STResNet(channels // 2 + self.context_channels, mid_channels, channels // 2, num_blocks)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.chunk(2, dim=1)
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, cond: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.cat([cond, other], 1) if self.parity == 0 else torch.cat([other, cond], 1)

    def _check_context(self, context: torch.Tensor | None) -> None:
        if (context is None) != (self.context_channels == 0):
            raise ValueError(f"this coupling was built for {self.context_channels} context channels; "
                             f"got context {None if context is None else list(context.shape)}")

    def _checker_st(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = checkerboard_mask(x.shape[2], x.shape[3], self.parity, device=x.device, dtype=x.dtype)
        s, t = self.net(torch.cat([x * b, b.expand(x.shape[0], 1, -1, -1), *context_maps(context, x)], 1))
        return b, s.to(x.dtype) * (1 - b), t.to(x.dtype) * (1 - b)

    def _channel_st(self, cond: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        maps = context_maps(context, cond)
        return self.net(torch.cat([cond, *maps], 1) if maps else cond)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_context(context)
        if self.mask_type == MASK_CHECKERBOARD:
            b, s, t = self._checker_st(x, context)
            y = x * torch.exp(s) + t  # s = t = 0 on the conditioning pixels
            return y, s.flatten(1).sum(1)
        cond, other = self._split(x)
        s, t = self._channel_st(cond, context)
        s, t = s.to(x.dtype), t.to(x.dtype)
        return self._join(cond, other * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self._check_context(context)
        if self.mask_type == MASK_CHECKERBOARD:
            b, s, t = self._checker_st(y, context)  # y * b == x * b
            return (y - t) * torch.exp(-s)
        cond, other = self._split(y)
        s, t = self._channel_st(cond, context)
        return self._join(cond, (other - t.to(y.dtype)) * torch.exp(-s.to(y.dtype)))


class _Scale(nn.Module):
    """One scale of the multi-scale architecture (its layers as coupling + ActNorm pairs)."""

    def __init__(self, channels: int, mid_channels: int, channel_mid_channels: int, num_blocks: int,
                 last: bool, context_channels: int = 0) -> None:
        super().__init__()
        self.last = last
        n_in = 4 if last else 3
        self.in_layers = nn.ModuleList()
        for k in range(n_in):
            self.in_layers.append(AffineCoupling(channels, MASK_CHECKERBOARD, k % 2, mid_channels, num_blocks,
                                                 context_channels))
            self.in_layers.append(ActNorm(channels))
        self.out_layers = nn.ModuleList()
        if not last:
            for k in range(3):
                self.out_layers.append(AffineCoupling(4 * channels, MASK_CHANNEL, k % 2, channel_mid_channels, num_blocks,
                                                      context_channels))
                self.out_layers.append(ActNorm(4 * channels))


def _forward_layer(layer: nn.Module, x: torch.Tensor,
                   context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of a flow forward: couplings see the context, ActNorm does not."""
    return layer(x, context) if isinstance(layer, AffineCoupling | MLPCoupling) else layer(x)


def _inverse_layer(layer: nn.Module, y: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    return layer.inverse(y, context) if isinstance(layer, AffineCoupling | MLPCoupling) else layer.inverse(y)


class RealNVPFlow(nn.Module):
    """Multi-scale Real NVP on ``[N, C, H, W]``; ``forward`` gives a flat ``z [N, C*H*W]`` and log-det ``[N]``.

    Args:
        in_channels, height, width: the shape of the model-space input.
        num_scales: scales; each but the last squeezes once, so H and W must be divisible by
            ``2 ** (num_scales - 1)`` (MNIST 28x28: at most 3, 28 -> 14 -> 7).
        mid_channels: width of the s/t ResNets at the first scale.
        num_blocks: residual blocks per s/t ResNet.
        grow_width: double the width after each squeeze, as in the paper (its channel-wise couplings run
            at twice the width of the checkerboard ones); otherwise every s/t ResNet has ``mid_channels``.
        context_channels: size ``E`` of a per-example context ``[N, E]`` given to every coupling's s/t
            network (0: an unconditional flow; ``forward``/``inverse`` then take no context).
    """

    def __init__(self, in_channels: int, height: int, width: int, num_scales: int = 3, mid_channels: int = 64,
                 num_blocks: int = 4, grow_width: bool = True, context_channels: int = 0) -> None:
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        f = 2 ** (num_scales - 1)
        if height % f or width % f:
            raise ValueError(f"{height}x{width} is not divisible by 2**(num_scales-1) = {f}; use fewer scales")
        self.input_shape = (in_channels, height, width)
        self.scales = nn.ModuleList()
        self.z_shapes: list[tuple[int, int, int]] = []  # shapes of the factored-out latents, in order
        c, h, w, mid = in_channels, height, width, mid_channels
        for i in range(num_scales):
            last = i == num_scales - 1
            grown = 2 * mid if grow_width else mid
            self.scales.append(_Scale(c, mid, grown, num_blocks, last, context_channels))
            if last:
                self.z_shapes.append((c, h, w))
            else:
                c, h, w, mid = 2 * c, h // 2, w // 2, grown  # 4c after squeeze, half factored out
                self.z_shapes.append((c, h, w))

    @property
    def num_dims(self) -> int:
        return math.prod(self.input_shape)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        zs = []
        h = x
        for scale in self.scales:
            for layer in scale.in_layers:
                h, ld = _forward_layer(layer, h, context)
                logdet = logdet + ld
            if not scale.last:
                h = squeeze(h)
                for layer in scale.out_layers:
                    h, ld = _forward_layer(layer, h, context)
                    logdet = logdet + ld
                z_out, h = h.chunk(2, dim=1)
                zs.append(z_out.flatten(1))
            else:
                zs.append(h.flatten(1))
        return torch.cat(zs, 1), logdet

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.num_dims:
            raise ValueError(f"z must have shape [N, {self.num_dims}], got {list(z.shape)}")
        sizes = [math.prod(s) for s in self.z_shapes]
        parts = [p.reshape(z.shape[0], *s) for p, s in zip(z.split(sizes, dim=1), self.z_shapes, strict=True)]
        h = parts[-1]
        for i in reversed(range(len(self.scales))):
            scale = self.scales[i]
            if not scale.last:
                h = torch.cat([parts[i], h], 1)
                for layer in reversed(scale.out_layers):
                    h = _inverse_layer(layer, h, context)
                h = unsqueeze(h)
            for layer in reversed(scale.in_layers):
                h = _inverse_layer(layer, h, context)
        return h


# ---------------------------------------------------------------- 2-D points
class MLPCoupling(nn.Module):
    """Affine coupling on ``[N, D]`` with a fixed binary mask and MLP ``s``/``t`` (bounded ``s``); with
    ``context_dim > 0`` the MLP also sees a per-example context ``[N, context_dim]``."""

    def __init__(self, dim: int, parity: int, hidden: int, num_hidden_layers: int = 2, context_dim: int = 0) -> None:
        super().__init__()
        mask = (torch.arange(dim) % 2 == parity).float()
        self.register_buffer("mask", mask.view(1, dim))
        self.context_dim = int(context_dim)
        layers: list[nn.Module] = [nn.Linear(dim + self.context_dim, hidden), nn.ReLU()]
        for _ in range(num_hidden_layers - 1):
            layers += [nn.Linear(hidden, hidden), nn.ReLU()]
        out = nn.Linear(hidden, 2 * dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)
        self.s_scale = nn.Parameter(torch.ones(1, dim))

    def _st(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if (context is None) != (self.context_dim == 0):
            raise ValueError(f"this coupling was built for a context of size {self.context_dim}; "
                             f"got context {None if context is None else list(context.shape)}")
        inputs = x * self.mask if context is None else torch.cat([x * self.mask, context.to(x.dtype)], 1)
        s_raw, t = self.net(inputs).chunk(2, dim=1)
        s = self.s_scale * torch.tanh(s_raw)
        return s.to(x.dtype) * (1 - self.mask), t.to(x.dtype) * (1 - self.mask)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x, context)
        return x * torch.exp(s) + t, s.sum(1)

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        s, t = self._st(y, context)
        return (y - t) * torch.exp(-s)


class MLPCouplingFlow(nn.Module):
    """Alternating :class:`MLPCoupling` + :class:`ActNorm` layers for ``[N, D]`` points (D >= 2); with
    ``context_dim > 0`` every coupling also sees a per-example context ``[N, context_dim]``."""

    def __init__(self, dim: int = 2, num_couplings: int = 8, hidden: int = 128, context_dim: int = 0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling flow needs at least 2 dimensions, got {dim}")
        self.dim = dim
        self.layers = nn.ModuleList([ActNorm(dim)])
        for k in range(num_couplings):
            self.layers.append(MLPCoupling(dim, k % 2, hidden, context_dim=context_dim))
            self.layers.append(ActNorm(dim))

    @property
    def num_dims(self) -> int:
        return self.dim

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for layer in self.layers:
            x, ld = _forward_layer(layer, x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = _inverse_layer(layer, z, context)
        return z

