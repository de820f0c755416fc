"""Noise schedules beta_1..beta_T of the forward process, always float64.

* ``linear``: beta_t linear from 1e-4 to 0.02 over T = 1000 steps (Ho et al. 2020, section 4).
* ``cosine``: abar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) with s = 0.008, betas clipped at 0.999
  (Nichol & Dhariwal 2021, eq. 17).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linearly spaced betas (float64 ``[T]``)."""
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, offset: float = COSINE_OFFSET, max_beta: float = COSINE_MAX_BETA) -> torch.Tensor:
    """Betas of the cosine schedule, ``beta_t = 1 - abar(t)/abar(t-1)`` clipped at ``max_beta`` (float64 ``[T]``)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = torch.cos((steps + offset) / (1.0 + offset) * math.pi / 2.0) ** 2
    return (1.0 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def make_betas(name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Betas of schedule ``name`` (one of :data:`SCHEDULES`) with ``num_timesteps`` steps."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
    if name == "linear":
        return linear_betas(num_timesteps, beta_start, beta_end)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"unknown beta schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def space_timesteps(num_timesteps: int, num_steps: int) -> torch.Tensor:
    """``num_steps`` evenly spaced timesteps of ``0..T-1`` (int64, increasing, first 0 and last T-1)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in 1..{num_timesteps}, got {num_steps}")
    if num_steps == 1:
        return torch.tensor([num_timesteps - 1], dtype=torch.int64)
    steps = torch.linspace(0, num_timesteps - 1, num_steps, dtype=torch.float64).round().to(torch.int64)
    return torch.unique(steps)
