"""Exact noised marginals of a Gaussian mixture under the forward process, and their scores.

If q_0 = sum_k w_k N(mu_k, s^2 I), then q_t(x) = int q_0(x_0) N(x; sqrt(abar_t) x_0, (1 - abar_t) I) dx_0 is again
a mixture: q_t = sum_k w_k N(sqrt(abar_t) mu_k, v_t I) with v_t = abar_t s^2 + 1 - abar_t. Its score is
grad log q_t(x) = sum_k r_k(x) (sqrt(abar_t) mu_k - x) / v_t with responsibilities r_k = w_k N_k(x) / q_t(x),
and the eps that the ideal network predicts is -sqrt(1 - abar_t) grad log q_t(x_t) (Tweedie's formula).
:meth:`GaussianMixtureMarginals.eps_model` wraps it as a ``model(x_t, t)`` for every sampler of
:mod:`genbench.diffusion.samplers`, so the samplers run with the exact score; :meth:`prior_sample` draws
the exact q_T that the samplers otherwise replace by N(0, I).
"""

from __future__ import annotations

import math

import torch

from genbench.data.toy2d import GaussianMixture2D
from genbench.diffusion.gaussian_diffusion import GaussianDiffusion, ModelFn


class GaussianMixtureMarginals:
    """q_t of an isotropic Gaussian mixture (``centers`` [K, D], one ``std``, ``weights`` [K] or equal)."""

    def __init__(self, centers: torch.Tensor, std: float, weights: torch.Tensor | None = None) -> None:
        self.centers = torch.as_tensor(centers, dtype=torch.float64)
        if self.centers.dim() != 2 or not std > 0:
            raise ValueError("centers must be [K, D] and std > 0")
        k = self.centers.shape[0]
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or bool((weights <= 0).any()):
            raise ValueError(f"weights must be {k} positive numbers")
        self.log_weights = torch.log(weights / weights.sum())
        self.std = float(std)

    @classmethod
    def from_mixture(cls, mixture: GaussianMixture2D) -> GaussianMixtureMarginals:
        """The marginals of one of the toy 2-D mixtures (eight_gaussians, two_moons)."""
        return cls(mixture.centers, mixture.std)

    def _abar(self, abar: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        abar = torch.as_tensor(abar, dtype=torch.float64, device=x.device)
        return abar.reshape(-1, 1) if abar.dim() else abar.reshape(1, 1)

    def _log_components(self, x: torch.Tensor, abar: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.to(torch.float64)
        a = self._abar(abar, x)  # [N or 1, 1]
        means = a.sqrt()[:, :, None] * self.centers.to(x.device)[None]  # [N or 1, K, D]
        variance = a * self.std**2 + 1.0 - a  # [N or 1, 1]
        d2 = ((x[:, None, :] - means) ** 2).sum(-1)  # [N, K]
        dim = x.shape[1]
        log_comp = self.log_weights.to(x.device) - 0.5 * d2 / variance - 0.5 * dim * torch.log(2 * math.pi * variance)
        return log_comp, means, variance

    def log_prob(self, x: torch.Tensor, abar: torch.Tensor | float = 1.0) -> torch.Tensor:
        """log q_t(x) in nats (float64 ``[N]``) at ``abar`` (a scalar or one value per row)."""
        return torch.logsumexp(self._log_components(x, abar)[0], dim=1)

    def score(self, x: torch.Tensor, abar: torch.Tensor | float = 1.0) -> torch.Tensor:
        """grad_x log q_t(x) (float64 ``[N, D]``)."""
        log_comp, means, variance = self._log_components(x, abar)
        resp = torch.softmax(log_comp, dim=1)  # [N, K]
        return ((resp[:, :, None] * means).sum(1) - x.to(torch.float64)) / variance

    def sample(self, n: int, abar: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of q_t (float64 ``[n, D]``) at one ``abar``."""
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.centers.shape[1], generator=generator, dtype=torch.float64)
        return math.sqrt(abar) * self.centers[k] + math.sqrt(abar * self.std**2 + 1.0 - abar) * z

    def eps_model(self, diffusion: GaussianDiffusion) -> ModelFn:
        """The ideal eps-network ``model(x_t, t)`` = -sqrt(1 - abar_t) grad log q_t(x_t) of ``diffusion``.

        ``t`` are original timestep indices (what the samplers pass, also on a respaced process), so
        ``diffusion`` must be the full process, with ``model_output='eps'`` and a fixed variance.
        """
        if diffusion.model_output != "eps" or diffusion.var_type == "learned_range":
            raise ValueError("the exact eps model needs model_output='eps' and a fixed var_type")
        abar_all = diffusion.alphas_cumprod

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            abar = abar_all.to(x_t.device)[t]
            return (-(1.0 - abar).sqrt()[:, None] * self.score(x_t, abar)).to(x_t.dtype)

        return model

    def prior_sample(self, diffusion: GaussianDiffusion, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of the exact q_T at the last step of ``diffusion`` (also of a respaced one)."""
        return self.sample(n, float(diffusion.alphas_cumprod[-1]), generator)
