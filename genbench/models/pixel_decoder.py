"""The discrete per-pixel decoder p(x|z) of the latent-variable models (VAE, latent diffusion).

A network maps z to feature maps at the image's resolution; :class:`DiscretePixelDecoder` reads them as a
distribution over the dataset's *discrete* grey levels, independent across pixels given z: a mixture of
discretized logistics with open edge bins (Salimans et al. 2017; one component is the plain discretized
logistic) or a per-pixel categorical over all ``num_levels``. Because p(x|z) is a probability mass
function, -log p(x|z) is a proper discrete NLL, and every bound built on it is a bound on the discrete
log-likelihood (a Gaussian/MSE decoder would give none: a density over continuous values is not a
probability of the discrete data).

The decoder has no parameters of its own (it is a reading of the network's output), so it is a plain object
that the models share rather than an ``nn.Module``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from genbench.data.transforms import to_model_space, to_pixels
from genbench.distributions import discretized_logistic_mixture_log_likelihood

DECODERS = ("logistic_mixture", "categorical")
SAMPLE_PIXELS = ("draw", "mode")  # a draw from p(x|z), or each pixel's most probable level given z
# The sample variant that scores the other choice of ``sample_pixels`` beside the declared one: name -> value
PIXEL_VARIANTS = {"decoder_modes": "mode", "decoder_draws": "draw"}
PIXEL_VARIANT_TEXT = {
    "decoder_modes": "each pixel's most probable level given z (not a sample of the model)",
    "decoder_draws": "every pixel drawn from p(x|z) (the model's own distribution)",
}


def other_pixel_variant(sample_pixels: str) -> dict[str, str]:
    """The sample variant (name -> description) of the pixel sampler that ``sample_pixels`` does not use."""
    name = "decoder_modes" if sample_pixels == "draw" else "decoder_draws"
    return {name: PIXEL_VARIANT_TEXT[name]}


@contextlib.contextmanager
def pixel_variant(model: Any, name: str) -> Iterator[None]:
    """``model`` (with a ``sample_pixels`` hyperparameter and ``sample_variants()``) samples its pixels the
    way the variant ``name`` says inside the block, and as declared again after it."""
    if name not in model.sample_variants():
        raise KeyError(f"{type(model).__name__} has no sample variant {name!r}; it has {sorted(model.sample_variants())}")
    main = model.hparams.sample_pixels
    model.hparams.sample_pixels = PIXEL_VARIANTS[name]
    try:
        yield
    finally:
        model.hparams.sample_pixels = main


class DiscretePixelDecoder:
    """Per-pixel discrete distribution parameterised by a network output ``[N, out_channels, H, W]``.

    Args:
        data_shape: ``(C, H, W)`` of the images.
        num_levels: grey levels L of the data (>= 2).
        kind: ``logistic_mixture`` (``num_mixtures`` discretized logistics per pixel) or ``categorical``
            (a softmax over all ``num_levels`` per pixel).
        num_mixtures: components of the logistic mixture (1 = a single discretized logistic).
        min_log_scale: floor on the logistic log-scales (model space, where a bin is 2/(L-1) wide).
    """

    def __init__(self, data_shape: tuple[int, ...], num_levels: int, kind: str = "logistic_mixture",
                 num_mixtures: int = 5, min_log_scale: float = -7.0) -> None:
        if kind not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {kind!r}")
        if num_levels < 2:
            raise ValueError(f"a discrete pixel decoder needs num_levels >= 2, got {num_levels}")
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_levels = int(num_levels)
        self.kind = kind
        self.num_mixtures = int(num_mixtures)
        self.min_log_scale = float(min_log_scale)

    @property
    def params_per_channel(self) -> int:
        return 3 * self.num_mixtures if self.kind == "logistic_mixture" else self.num_levels

    @property
    def out_channels(self) -> int:
        """Feature maps the network must output per image."""
        return self.data_shape[0] * self.params_per_channel

    @property
    def name(self) -> str:
        if self.kind == "categorical":
            return f"categorical({self.num_levels})"
        return f"discretized_logistic_mixture(K={self.num_mixtures})"

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Network output -> per-pixel distribution parameters, components / levels along dim 1."""
        n, (c, h, w) = out.shape[0], self.data_shape
        if self.kind == "categorical":
            return (out.view(n, self.num_levels, c, h, w),)
        logits, means, log_scales = out.view(n, 3, self.num_mixtures, c, h, w).unbind(1)
        return logits, means, log_scales.clamp(min=self.min_log_scale)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Per-pixel log p(x|z) ``[N, C, H, W]`` of uint8 ``x`` given the network output ``out``, in ``dtype``."""
        params = [p.to(dtype) for p in self.split(out)]
        if self.kind == "categorical":
            return torch.log_softmax(params[0], dim=1).gather(1, x.long().unsqueeze(1)).squeeze(1)
        x_ms = to_model_space(x, self.num_levels, dtype)
        return discretized_logistic_mixture_log_likelihood(x_ms, *params, levels=self.num_levels)

    def level_log_probs(self, out: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """log p(x_pixel = k | z) for every level k: ``[N, L, C, H, W]`` (each pixel's entries sum to one)."""
        n = out.shape[0]
        levels = [
            self.log_prob(torch.full((n, *self.data_shape), k, dtype=torch.uint8, device=out.device), out, dtype)
            for k in range(self.num_levels)
        ]
        return torch.stack(levels, dim=1)

    @staticmethod
    def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """U(0, 1) draws on ``generator``'s device (the same draws wherever the model runs), moved to ``device``."""
        u = torch.rand(shape, generator=generator, device=device if generator is None else generator.device)
        return u.to(device).clamp(1e-6, 1.0 - 1e-6)

    def pixels(self, out: torch.Tensor, draw: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 pixels from p(x|z): a draw, or each pixel's most probable level (``draw=False``)."""
        params = [p.float() for p in self.split(out)]
        device = out.device
        if not draw:
            if self.kind == "categorical":
                return params[0].argmax(dim=1).to(torch.uint8)
            best_lp = best_k = None
            for k in range(self.num_levels):  # exact mode of the discretized mixture, one level at a time
                x_k = torch.full((out.shape[0], *self.data_shape), k, dtype=torch.uint8, device=device)
                lp = self.log_prob(x_k, out, torch.float32)
                if best_lp is None:
                    best_lp, best_k = lp, torch.zeros_like(lp, dtype=torch.uint8)
                else:
                    better = lp > best_lp
                    best_lp = torch.where(better, lp, best_lp)
                    best_k = torch.where(better, torch.full_like(best_k, k), best_k)
            return best_k
        if self.kind == "categorical":
            gumbel = -torch.log(-torch.log(self._uniform(tuple(params[0].shape), generator, device)))
            return (params[0] + gumbel).argmax(dim=1).to(torch.uint8)
        logits, means, log_scales = params
        gumbel = -torch.log(-torch.log(self._uniform(tuple(logits.shape), generator, device)))
        component = (logits + gumbel).argmax(dim=1, keepdim=True)
        mean = means.gather(1, component).squeeze(1)
        log_scale = log_scales.gather(1, component).squeeze(1)
        u = self._uniform(tuple(mean.shape), generator, device)
        x_ms = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return to_pixels(x_ms, self.num_levels)  # open edge bins: values beyond [-1, 1] clamp to the edge levels
