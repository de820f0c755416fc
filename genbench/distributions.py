"""Densities the models are built from, in nats: Gaussian log-densities and KL, and the discretized
Gaussian / logistic (mixture) decoders of discrete pixels used by the VAE and the DDPM bound.

Model space convention: pixel values ``k in {0, ..., L-1}`` map to ``2k/(L-1) - 1`` in [-1, 1]; a bin is
``2/(L-1)`` wide, and the two edge bins are open (they extend to -inf and +inf) so that the probabilities
of all L levels sum to one. The conversion of these log-likelihoods to bits per dimension belongs to the
evaluation (:mod:`genbench.metrics.likelihood`).
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def diag_normal_log_prob(z: torch.Tensor, mean: torch.Tensor | float = 0.0,
                         logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))) summed over the last dim, in nats."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * ((z - mean).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim (per example for a flat ``[N, D]`` latent), in nats."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ) in nats."""
    mean1, logvar1, mean2, logvar2 = torch.broadcast_tensors(
        torch.as_tensor(mean1), torch.as_tensor(logvar1), torch.as_tensor(mean2), torch.as_tensor(logvar2)
    )
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standardized_bin(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, levels: int):
    """The half bin width and the standardized offsets of the pixel, its bin's upper and lower edge."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    half_bin = 1.0 / (levels - 1)
    centered = x - means
    inv_scale = torch.exp(-log_scales)
    return half_bin, inv_scale * centered, inv_scale * (centered + half_bin), inv_scale * (centered - half_bin)


def _open_edged(x: torch.Tensor, half_bin: float, log_lowest: torch.Tensor, log_highest: torch.Tensor,
                log_mid: torch.Tensor) -> torch.Tensor:
    """The lowest level takes all mass below its upper edge, the highest all mass above its lower edge."""
    return torch.where(x < -1.0 + half_bin, log_lowest, torch.where(x > 1.0 - half_bin, log_highest, log_mid))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, levels: int = 256
) -> torch.Tensor:
    """Elementwise log-probability of discrete pixels under a discretized Gaussian (Ho et al. 2020, L_0).

    ``x`` holds pixel values already mapped to model space (``2k/(L-1) - 1``); ``means`` and ``log_scales``
    (log standard deviations) are in the same space. Edge bins are open, so the probabilities of the L
    levels sum to one exactly. Computed in the input dtype; pass float64 for evaluation.
    """
    half_bin, mid_in, plus_in, min_in = _standardized_bin(x, means, log_scales, levels)
    # validate_args=False: a diverged model's NaN inputs must reach the loss (and the NaN-loss guard), not
    # raise a ValueError from inside the distribution.
    normal = torch.distributions.Normal(torch.zeros((), dtype=x.dtype), torch.ones((), dtype=x.dtype),
                                        validate_args=False)
    cdf_plus = normal.cdf(plus_in)
    cdf_min = normal.cdf(min_in)
    # log Phi(a) and log(1 - Phi(b)) = log Phi(-b), computed stably with torch.special.log_ndtr.
    log_cdf_plus = torch.special.log_ndtr(plus_in)
    log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
    # In the far tails cdf_plus - cdf_min underflows: use log(pdf * width) there.
    cdf_delta = cdf_plus - cdf_min
    log_mid = torch.where(
        cdf_delta > 1e-12,
        torch.log(cdf_delta.clamp(min=torch.finfo(x.dtype).tiny)),
        normal.log_prob(mid_in) - log_scales + math.log(2 * half_bin),
    )
    return _open_edged(x, half_bin, log_cdf_plus, log_one_minus_cdf_min, log_mid)


def discretized_logistic_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, levels: int = 256
) -> torch.Tensor:
    """Elementwise log-probability of discrete pixels under a discretized logistic (Salimans et al. 2017).

    Same conventions as :func:`discretized_gaussian_log_likelihood`; ``log_scales`` is the log of the
    logistic scale parameter. Stable in all regimes (log-sigmoid at the open edges, a density
    approximation where the bin mass underflows).
    """
    half_bin, mid_in, plus_in, min_in = _standardized_bin(x, means, log_scales, levels)
    log_cdf_plus = torch.nn.functional.logsigmoid(plus_in)  # log sigmoid(plus_in), for the lowest level
    log_one_minus_cdf_min = torch.nn.functional.logsigmoid(-min_in)  # for the highest level
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    log_pdf_mid = mid_in - log_scales - 2.0 * torch.nn.functional.softplus(mid_in)
    log_mid = torch.where(
        cdf_delta > 1e-5,
        torch.log(cdf_delta.clamp(min=torch.finfo(x.dtype).tiny)),
        log_pdf_mid + math.log(2 * half_bin),
    )
    return _open_edged(x, half_bin, log_cdf_plus, log_one_minus_cdf_min, log_mid)


def discretized_logistic_mixture_log_likelihood(
    x: torch.Tensor,
    logit_weights: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    levels: int = 256,
) -> torch.Tensor:
    """Elementwise log-probability of discrete pixels under a mixture of discretized logistics.

    ``x`` has shape ``[N, ...]`` (model space, as in :func:`discretized_logistic_log_likelihood`); the
    mixture parameters have shape ``[N, K, ...]`` with the K components along dim 1, each component with
    its own open-edged discretized logistic, mixed by ``softmax(logit_weights, dim=1)``. Every pixel has its
    own mixture (no coupling between channels). Returns ``[N, ...]``; the probabilities of the L levels
    sum to one for every pixel.
    """
    if not (logit_weights.shape == means.shape == log_scales.shape):
        raise ValueError(
            f"mixture parameters must share one shape, got {list(logit_weights.shape)}, {list(means.shape)}, "
            f"{list(log_scales.shape)}"
        )
    if means.dim() != x.dim() + 1 or means.shape[0] != x.shape[0] or means.shape[2:] != x.shape[1:]:
        raise ValueError(
            f"mixture parameters must have shape [N, K, ...] for x {list(x.shape)}, got {list(means.shape)}"
        )
    log_component = discretized_logistic_log_likelihood(x.unsqueeze(1), means, log_scales, levels)
    return torch.logsumexp(torch.log_softmax(logit_weights, dim=1) + log_component, dim=1)
