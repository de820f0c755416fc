"""The optimal discriminator of the GAN game, checked numerically (Goodfellow et al. 2014, Prop. 1 and Thm. 1).

For a fixed generator distribution ``p_g``, the discriminator maximising
``V(D) = E_{p_r}[log D(x)] + E_{p_g}[log(1 - D(x))]`` is ``D*(x) = p_r(x) / (p_r(x) + p_g(x))``, and the game
value there is ``V(D*) = 2 JSD(p_r || p_g) - 2 log 2``. Maximising ``V`` is minimising the GAN's own
non-saturating discriminator loss (``softplus(-s_real) + softplus(s_fake) = -V`` with ``D = sigmoid(s)``),
so :func:`fit_discriminator` trains with :func:`genbench.models.gan.discriminator_loss` itself.

Everything here is 1-D with densities known in closed form: the JSD comes from quadrature on a grid, the
discriminator from samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from genbench.distributions import diag_normal_log_prob
from genbench.models.gan import discriminator_loss

LOG2 = math.log(2.0)


def normal_log_prob(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """log N(x; mean, std^2), elementwise."""
    return diag_normal_log_prob(x.unsqueeze(-1), mean, 2.0 * math.log(std))


def optimal_discriminator(log_p_r: torch.Tensor, log_p_g: torch.Tensor) -> torch.Tensor:
    """``D*(x) = p_r / (p_r + p_g)`` from log-densities (stable: ``sigmoid(log p_r - log p_g)``)."""
    return torch.sigmoid(log_p_r - log_p_g)


def jsd_quadrature(
    log_p_r: Callable[[torch.Tensor], torch.Tensor],
    log_p_g: Callable[[torch.Tensor], torch.Tensor],
    lo: float,
    hi: float,
    num_points: int = 20_001,
) -> float:
    """``JSD(p_r || p_g)`` in nats by the trapezoidal rule on ``[lo, hi]`` (float64).

    ``JSD = 1/2 KL(p_r || m) + 1/2 KL(p_g || m)`` with ``m = (p_r + p_g) / 2``. The interval must hold
    essentially all the mass of both densities.
    """
    x = torch.linspace(lo, hi, num_points, dtype=torch.float64)
    lr, lg = log_p_r(x), log_p_g(x)
    lm = torch.logaddexp(lr, lg) - LOG2
    integrand = 0.5 * lr.exp() * (lr - lm) + 0.5 * lg.exp() * (lg - lm)
    return float(torch.trapezoid(integrand, x))


def game_value_quadrature(
    d: Callable[[torch.Tensor], torch.Tensor],
    log_p_r: Callable[[torch.Tensor], torch.Tensor],
    log_p_g: Callable[[torch.Tensor], torch.Tensor],
    lo: float,
    hi: float,
    num_points: int = 20_001,
) -> float:
    """``V(D) = int p_r log D + p_g log(1 - D)`` by quadrature, for a discriminator ``d`` returning logits."""
    x = torch.linspace(lo, hi, num_points, dtype=torch.float64)
    s = d(x).double()
    integrand = log_p_r(x).exp() * nn.functional.logsigmoid(s) + log_p_g(x).exp() * nn.functional.logsigmoid(-s)
    return float(torch.trapezoid(integrand, x))


class QuadraticLogitDiscriminator(nn.Module):
    """``D(x) = sigmoid(a x^2 + b x + c)``: contains ``D*`` exactly when ``p_r`` and ``p_g`` are Gaussians."""

    def __init__(self) -> None:
        super().__init__()
        self.coef = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1).to(self.coef.dtype)
        return self.coef[0] * x * x + self.coef[1] * x + self.coef[2]


def fit_discriminator(
    discriminator: nn.Module,
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    steps: int = 500,
    lr: float = 1e-2,
) -> list[float]:
    """Train ``discriminator`` (logits) towards the optimum with the GAN's non-saturating D loss.

    Full-batch Adam on fixed samples (``x_real`` from p_r, ``x_fake`` from the fixed p_g, shape ``[N, 1]``);
    returns the loss history.
    """
    opt = torch.optim.Adam(discriminator.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = discriminator_loss("non_saturating", discriminator(x_real), discriminator(x_fake))
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history
