"""Langevin samplers: ULA, MALA, annealed Langevin, and the predictor-corrector diffusion sampler.

For a density p with score grad log p, the overdamped Langevin diffusion dX = grad log p(X) dt + sqrt(2) dB
has p as its stationary law. Its Euler-Maruyama discretisation with step size h is

    ULA:   x <- x + h grad log p(x) + sqrt(2h) xi,     xi ~ N(0, I),

which converges (for log-concave p) to a *biased* law: on N(0, s^2) the chain is the AR(1) recursion
x' = (1 - h/s^2) x + sqrt(2h) xi, whose stationary variance is s^2 / (1 - h / (2 s^2)) (:func:`ula_gaussian_moments`).
MALA (Roberts & Tweedie 1996) uses the ULA move as a proposal and accepts it with the Metropolis-Hastings
probability, which makes p exactly stationary.

Annealed Langevin (Song & Ermon 2019) runs ULA through a decreasing sequence of noise levels, step size
proportional to the level's variance. The predictor-corrector sampler (Song et al. 2021b, Algorithm 5 for the
VP SDE) alternates a reverse-process step (the predictor) with Langevin steps at the new noise level (the
corrector), whose step size follows the signal-to-noise rule eps = 2 alpha_i (r ||z|| / ||g||)^2 with
g = grad log q_t(x), z ~ N(0, I) and alpha_i = 1 - beta_i. As in the reference implementation, ||z|| and ||g||
are averaged over the batch: per-example norms blow up in low dimension, where ||g|| of one draw can be
near 0 (measured on eight_gaussians, exact score, 100 steps: mean target log-density -22.9, against -1.18
with batch norms and -1.12 for the data), so a PC draw
depends on the batch it is drawn with (fixed batch size and seed give the same samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from genbench.diffusion.gaussian_diffusion import GaussianDiffusion, Generators, ModelFn, randn
from genbench.diffusion.modes import PCPredictor, parse
from genbench.diffusion.samplers import ancestral_step, initial_noise, score_view_step

ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # x [N, ...] -> grad_x log p(x) [N, ...]
LogProbFn = Callable[[torch.Tensor], torch.Tensor]  # x [N, ...] -> log p(x) [N] (up to a constant)
LevelScoreFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x, level index) -> score of that level


def _check_step(step_size: float, num_steps: int) -> None:
    if not step_size > 0:
        raise ValueError(f"the Langevin step size must be > 0, got {step_size}")
    if num_steps < 0:
        raise ValueError(f"the number of Langevin steps must be >= 0, got {num_steps}")


def _flat_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))


@torch.no_grad()
def ula(score: ScoreFn, x: torch.Tensor, step_size: float, num_steps: int, generator: Generators = None) -> torch.Tensor:
    """``num_steps`` unadjusted Langevin steps x <- x + h score(x) + sqrt(2h) xi from ``x``."""
    _check_step(step_size, num_steps)
    for _ in range(num_steps):
        x = x + step_size * score(x) + math.sqrt(2.0 * step_size) * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def mala(
    log_prob: LogProbFn,
    score: ScoreFn,
    x: torch.Tensor,
    step_size: float,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """``num_steps`` Metropolis-adjusted Langevin steps from ``x``; returns the chain's state and acceptance rate.

    Proposal y = x + h score(x) + sqrt(2h) xi, accepted with probability
    min(1, p(y) q(x | y) / (p(x) q(y | x))), log q(y | x) = -||y - x - h score(x)||^2 / (4h) + const.
    """
    _check_step(step_size, num_steps)
    h = step_size
    log_p, grad = log_prob(x), score(x)
    accepted = 0.0
    for _ in range(num_steps):
        y = x + h * grad + math.sqrt(2.0 * h) * randn(x.shape, generator, x.device, x.dtype)
        log_p_y, grad_y = log_prob(y), score(y)
        log_q_forward = -((y - x - h * grad) ** 2).flatten(1).sum(1) / (4.0 * h)
        log_q_backward = -((x - y - h * grad_y) ** 2).flatten(1).sum(1) / (4.0 * h)
        log_ratio = log_p_y + log_q_backward - log_p - log_q_forward
        u = torch.rand(x.shape[0], generator=generator, device=generator.device if generator else x.device, dtype=x.dtype)
        accept = torch.log(u.to(x.device)) < log_ratio
        mask = accept.reshape(-1, *([1] * (x.dim() - 1)))
        x, grad = torch.where(mask, y, x), torch.where(mask, grad_y, grad)
        log_p = torch.where(accept, log_p_y, log_p)
        accepted += float(accept.to(torch.float64).mean())
    return x, (accepted / num_steps if num_steps else float("nan"))


def ula_gaussian_moments(
    variance: float, step_size: float, num_steps: int, start_mean: float = 0.0, start_variance: float = 1.0
) -> tuple[float, float]:
    """Exact mean and variance after ``num_steps`` ULA steps on N(0, variance) from N(start_mean, start_variance).

    The chain is x' = a x + sqrt(2h) xi with a = 1 - h / variance, so mean_n = a^n mean_0 and
    var_n = a^{2n} var_0 + 2h (1 - a^{2n}) / (1 - a^2) -> variance / (1 - h / (2 variance)) for 0 < h < 2 variance.
    """
    _check_step(step_size, num_steps)
    a = 1.0 - step_size / variance
    stationary = 2.0 * step_size / (1.0 - a * a) if abs(a) != 1.0 else math.inf
    a2n = a ** (2 * num_steps)
    return start_mean * a**num_steps, a2n * start_variance + (1.0 - a2n) * stationary


@torch.no_grad()
def annealed_langevin(
    score: LevelScoreFn,
    level_variances: Sequence[float],
    x: torch.Tensor,
    step_size: float,
    steps_per_level: int,
    generator: Generators = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) in the ULA step convention.

    For each level i (noise variance ``level_variances[i]``, largest first) ``steps_per_level`` ULA steps with
    h_i = ``step_size`` * variance_i / variance_last, so the last level runs at ``step_size``.
    """
    if len(level_variances) == 0 or min(level_variances) <= 0:
        raise ValueError("annealed Langevin needs a non-empty list of positive level variances")
    last = float(level_variances[-1])
    for i, variance in enumerate(level_variances):
        x = ula(lambda z, i=i: score(z, i), x, step_size * float(variance) / last, steps_per_level, generator)
    return x


def _diffusion_score(diffusion: GaussianDiffusion, model: ModelFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    eps = diffusion.p_mean_variance(model, x, t, clip_denoised=False)["pred_eps"]
    return diffusion.score_from_eps(eps, t)


@torch.no_grad()
def langevin_corrector(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    x: torch.Tensor,
    index: int,
    num_steps: int,
    snr: float,
    generator: Generators = None,
) -> torch.Tensor:
    """``num_steps`` Langevin steps targeting q at step ``index`` of ``diffusion``, signal-to-noise step rule."""
    t = torch.full((x.shape[0],), index, dtype=torch.int64, device=x.device)
    alpha = float(1.0 - diffusion.betas[index])
    for _ in range(num_steps):
        g = _diffusion_score(diffusion, model, x, t)
        z = randn(x.shape, generator, x.device, x.dtype)
        eps = 2.0 * alpha * (snr * float(_flat_norm(z).mean()) / max(float(_flat_norm(g).mean()), 1e-12)) ** 2
        x = x + eps * g + math.sqrt(2.0 * eps) * z
    return x


@torch.no_grad()
def pc_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    predictor: str = "sde",
    corrector_steps: int = 1,
    snr: float = 0.16,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = True,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predictor-corrector sampling over the steps of ``diffusion``.

    Each step i -> i - 1 is one predictor move (``sde``: the Euler-Maruyama step of
    :func:`genbench.diffusion.samplers.sde_sample`; ``ancestral``: x_{i-1} ~ p(x_{i-1} | x_i)), then
    ``corrector_steps`` Langevin steps at step i - 1. The ``sde`` predictor ends by denoising with the
    predicted x_0, the ``ancestral`` one with the mean of p(x_0 | x_1). Network evaluations per sample:
    S + corrector_steps (S - 1) for S steps (:func:`pc_network_evaluations`).
    """
    parse(PCPredictor, predictor, "pc predictor")
    if corrector_steps < 0:
        raise ValueError(f"pc corrector_steps must be >= 0, got {corrector_steps}")
    if not snr > 0:
        raise ValueError(f"pc snr must be > 0, got {snr}")
    device = torch.device(device)
    x = initial_noise(shape, generator, device, dtype, x_T)
    for i in reversed(range(diffusion.num_timesteps)):
        if predictor == PCPredictor.ANCESTRAL:
            x = ancestral_step(diffusion, model, x, i, generator, clip_denoised)
        elif i > 0:
            x = score_view_step(diffusion, model, x, i, True, generator)
        else:
            t = torch.zeros(shape[0], dtype=torch.int64, device=device)
            x = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)["pred_x_start"]
        if i > 0 and corrector_steps > 0:
            x = langevin_corrector(diffusion, model, x, i - 1, corrector_steps, snr, generator)
    return x


def pc_network_evaluations(steps: int, corrector_steps: int) -> int:
    """Network calls per sample of :func:`pc_sample` on ``steps`` steps."""
    return steps + corrector_steps * (steps - 1)
