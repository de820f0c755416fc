"""Zero-shot restoration with a trained diffusion model: denoising diffusion null-space models (DDNM).

Wang et al. 2022 ("Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model"): at every reverse
step the network's estimate x_0|t is rectified so that its range-space part comes from the measurement,

    x̂_0|t = x_0|t - λ_t A⁺(A x_0|t - y)        (λ_t = 1: A⁺y + (I - A⁺A) x_0|t, paper eq. 13)

and sampling continues from x̂_0|t with the sampler's own update (ancestral: the posterior mean
mu~_t(x_t, x̂_0|t) plus its noise; DDIM: sqrt(abar_prev) x̂_0|t + direction + noise). With noise-free y the
last step returns x̂_0|1 itself, so A x̂ = y exactly.

DDNM+ (noisy y = A x + sigma_y n, paper eq. 17-19): the correction carries the noise A⁺n into x_{t-1} with
scale a_t λ_t, where a_t is the weight of x_0 in the next-step mean. λ_t = 1 while the sampler's own step noise
sigma_t can absorb it (sigma_t >= a_t g sigma_y, g = the largest singular value of A⁺), else
λ_t = sigma_t / (a_t g sigma_y); the fresh noise is reduced to sqrt(sigma_t² - (a_t λ_t g sigma_y)²), so the
total noise of x_{t-1} is what the sampler expects. A deterministic step (DDIM eta = 0) has no noise to trade,
so noisy y needs ancestral steps or DDIM with eta > 0.

Time-travel (the paper's section 3.3, RePaint's jump schedule): with ``travel_length`` L > 0, every time the
sampler reaches a level that is a multiple of L it goes back up L levels by the forward process
(x_{j+1} = sqrt(1 - beta_{j+1}) x_j + sqrt(beta_{j+1}) z) and comes down again, ``travel_repeat`` times, so
the measurement's information spreads to the null space through more network evaluations
(:func:`travel_levels`).

``rectify=False`` runs the unmodified sampler with the same random draws (its outputs equal
:func:`genbench.diffusion.samplers.sample`), the baseline that shows what the rectification adds.
"""

from __future__ import annotations

import torch

from genbench.diffusion.gaussian_diffusion import GaussianDiffusion, Generators, ModelFn, randn
from genbench.diffusion.samplers import respaced
from genbench.restoration.operators import Operator

RESTORE_SAMPLERS = ("ancestral", "ddim")


def check_sampler(sampler: str, eta: float, sigma_y: float) -> None:
    """A clear error for a sampler/eta/sigma_y combination DDNM cannot run."""
    if sampler not in RESTORE_SAMPLERS:
        raise ValueError(f"unknown restoration sampler {sampler!r}; valid: {', '.join(RESTORE_SAMPLERS)}")
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}")
    if sigma_y < 0:
        raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
    if sigma_y > 0 and sampler == "ddim" and eta == 0:
        raise ValueError("noisy measurements (sigma_y > 0) need stochastic steps for DDNM+: use --sampler ancestral "
                         "or --eta > 0 (e.g. 0.85)")


def travel_levels(num_steps: int, length: int = 0, repeat: int = 1) -> list[int]:
    """The noise levels the sampler visits, from ``num_steps - 1`` (x_T) down to -1 (the output).

    Without time-travel (``length`` 0) it is num_steps - 1, ..., 0, -1. Otherwise each level j = 0, L, 2L, ...
    with j + L <= num_steps - 1 is followed ``repeat`` times by L steps back up (RePaint's schedule).
    """
    if length < 0 or repeat < 1:
        raise ValueError(f"time-travel needs length >= 0 and repeat >= 1, got {length} and {repeat}")
    if length == 0:
        return list(range(num_steps - 1, -2, -1))
    remaining = {j: repeat for j in range(0, num_steps - length, length)}
    level, out = num_steps - 1, [num_steps - 1]
    while level > -1:
        level -= 1
        out.append(level)
        if remaining.get(level, 0) > 0:
            remaining[level] -= 1
            for _ in range(length):
                level += 1
                out.append(level)
    return out


def network_evaluations(num_steps: int, length: int = 0, repeat: int = 1) -> int:
    """Network calls per image of :func:`ddnm_sample`: one per downward step."""
    levels = travel_levels(num_steps, length, repeat)
    return sum(1 for a, b in zip(levels[:-1], levels[1:], strict=True) if b < a)


@torch.no_grad()
def ddnm_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    operator: Operator,
    y: torch.Tensor,
    shape: tuple[int, ...],
    sampler: str = "ddim",
    num_steps: int = 50,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    rectify: bool = True,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = True,
    travel_length: int = 0,
    travel_repeat: int = 1,
) -> torch.Tensor:
    """Restore ``shape`` images from measurements ``y`` with ``sampler`` on ``num_steps`` evenly spaced steps.

    Returns the final model-space estimate (not clipped: clipping would undo the data consistency).
    """
    check_sampler(sampler, eta, sigma_y)
    device = torch.device(device)
    process = respaced(diffusion, num_steps)
    y = y.to(device, dtype)
    gain = operator.noise_gain()
    x = randn(shape, generator, device, dtype)
    levels = travel_levels(process.num_timesteps, travel_length, travel_repeat)
    for i, nxt in zip(levels[:-1], levels[1:], strict=True):
        if nxt > i:  # time-travel: one forward step of the (respaced) process
            beta = float(process.betas[nxt])
            x = (1.0 - beta) ** 0.5 * x + beta**0.5 * randn(shape, generator, device, dtype)
            continue
        t = torch.full((shape[0],), i, dtype=torch.int64, device=device)
        out = process.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
        x0 = out["pred_x_start"]
        abar = process._extract(process.alphas_cumprod, t, x)
        abar_prev = process._extract(process.alphas_cumprod_prev, t, x)
        if sampler == "ancestral":
            a_t = process._extract(process.posterior_mean_coef1, t, x)
            sigma = torch.exp(0.5 * out["log_variance"]) if i > 0 else torch.zeros_like(x)
        else:
            a_t = abar_prev.sqrt()
            sigma = eta * torch.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
            sigma = sigma.expand_as(x) if i > 0 else torch.zeros_like(x)
        noise_std = sigma
        if rectify:
            if sigma_y > 0:
                carried = a_t * gain * sigma_y
                lam = torch.clamp(sigma / carried, max=1.0)
                noise_std = torch.sqrt((sigma**2 - (lam * carried) ** 2).clamp(min=0.0))
            else:
                lam = 1.0
            x0 = operator.rectify(x0, y, lam)
        if sampler == "ancestral":
            x = process.q_posterior_mean_variance(x0, x, t)[0]
        else:
            x = abar_prev.sqrt() * x0 + torch.sqrt((1.0 - abar_prev - sigma**2).clamp(min=0.0)) * out["pred_eps"]
        if i > 0 and (sampler == "ancestral" or eta > 0):
            x = x + noise_std * randn(shape, generator, device, dtype)
    return x
