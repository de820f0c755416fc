"""The one place where discrete pixels become model-space tensors and back.

Model space is [-1, 1]: level ``k`` of ``L`` maps to ``2k/(L-1) - 1`` (exact bin centres, used by the
discretized decoders of DDPM and the VAE). Flows use :func:`dequantize` instead, which draws
``v = (k + u)/L`` in [0, 1) and reports the log-Jacobian of any further map, so that
:func:`genbench.metrics.likelihood.discrete_nll_from_density` can turn a density into a bound on the
discrete likelihood.
"""

from __future__ import annotations

import math

import torch


def check_images(x: torch.Tensor, shape: tuple[int, ...], levels: int, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a uint8 batch ``[N, *shape]`` with values below ``levels``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of uint8 pixels, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"{name} must have dtype torch.uint8 (discrete pixels 0..{levels - 1}), got {x.dtype}")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"{name} must have shape [N, {', '.join(map(str, shape))}], got {list(x.shape)}")
    if x.numel() and int(x.max()) >= levels:
        raise ValueError(f"{name} has pixel value {int(x.max())}, outside 0..{levels - 1} for {levels} levels")


def to_model_space(x: torch.Tensor, levels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map discrete pixels ``0..L-1`` to bin centres in [-1, 1]."""
    return x.to(dtype) * (2.0 / (levels - 1)) - 1.0


def to_pixels(z: torch.Tensor, levels: int) -> torch.Tensor:
    """Map model-space values in [-1, 1] to the nearest discrete level (uint8)."""
    k = torch.round((z.clamp(-1.0, 1.0) + 1.0) * ((levels - 1) / 2.0))
    return k.to(torch.uint8)


def dequantize(
    x: torch.Tensor, levels: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform dequantization: ``v = (x + u) / L`` with ``u ~ U[0, 1)``, a point of [0, 1)^D."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=dtype)
    return (x.to(dtype) + u) / levels


def quantize(v: torch.Tensor, levels: int) -> torch.Tensor:
    """Inverse of :func:`dequantize`: the level whose cell contains ``v`` (uint8)."""
    return torch.floor(v.clamp(0.0, 1.0 - 1e-7) * levels).clamp(0, levels - 1).to(torch.uint8)


def scale_to_symmetric(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = 2v - 1``: [0,1) -> [-1,1). Returns z and log|det dz/dv| per example (D log 2)."""
    d = v[0].numel()
    logdet = torch.full((v.shape[0],), d * math.log(2.0), dtype=v.dtype, device=v.device)
    return 2.0 * v - 1.0, logdet


def logit_transform(v: torch.Tensor, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """RealNVP's preprocessing ``z = logit(alpha + (1 - 2 alpha) v)`` with its exact log-Jacobian per example."""
    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
    p = alpha + (1.0 - 2.0 * alpha) * v
    z = torch.log(p) - torch.log1p(-p)
    # dz/dv = (1 - 2 alpha) / (p (1 - p))
    logdet = (math.log(1.0 - 2.0 * alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
    return z, logdet


def inverse_logit_transform(z: torch.Tensor, alpha: float = 0.05) -> torch.Tensor:
    """Inverse of :func:`logit_transform`: back to [0, 1]."""
    return ((torch.sigmoid(z) - alpha) / (1.0 - 2.0 * alpha)).clamp(0.0, 1.0)
