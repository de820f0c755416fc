"""Likelihood accounting shared by every model.

All log-likelihoods in genbench are natural-log values per example of the *discrete* data. The one
conversion to bits per dimension lives here (:func:`bpd`), together with the accounting for mapping
discrete pixels into a continuous model space (:func:`discrete_nll_from_density`). The densities the
models are built from (Gaussian KL, discretized decoders) are in :mod:`genbench.distributions`.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def bpd(nll_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Bits per dimension from a negative log-likelihood in nats per example.

    ``num_dims`` is the number of data dimensions at the dataset's native resolution (C*H*W): no padding
    or resizing may be counted into it.
    """
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    return nll_nats / (num_dims * LN2)


def discrete_nll_from_density(
    log_density_model_space: torch.Tensor,
    logdet_to_model_space: torch.Tensor | float,
    num_dims: int,
    levels: int,
) -> torch.Tensor:
    """Upper bound on -log P(x) for discrete data from a continuous density with uniform dequantization.

    The data x in {0..L-1}^D is dequantized to v = (x + u) / L with u ~ U[0,1)^D, then mapped to model
    space z = f(v) (a scaling to [-1, 1], a logit, ...) whose log|det df/dv| is ``logdet_to_model_space``.
    Then by Jensen (Theis et al. 2016)

        log P(x) >= E_u[ log p_z(f(v)) + log|det df/dv| ] - D log L,

    so the returned value ``-(log p_z + logdet) + D log L`` (nats per example) is a single-sample estimate
    of an upper bound on the discrete NLL. A uniform density on [0, 1]^D gives exactly D log L, i.e.
    log2(L) bits per dimension.
    """
    return -(log_density_model_space + logdet_to_model_space) + num_dims * math.log(levels)








def mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of a 1-D tensor (float64)."""
    v = values.detach().to(torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("mean_and_stderr of an empty tensor")
    if v.numel() == 1:
        return float(v.item()), float("nan")
    return float(v.mean().item()), float(v.std(unbiased=True).item() / math.sqrt(v.numel()))
