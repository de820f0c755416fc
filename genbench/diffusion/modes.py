"""The named modes of the diffusion process and its samplers: one declaration each.

Members are ``StrEnum``s, so the config strings (``model_output: eps``, ``sampler: ddim``...) are the
values and compare equal to the members; modules store the plain string (it is what checkpoints and
configs hold) and dispatch on the members.
"""

from __future__ import annotations

from enum import StrEnum


class ModelOutput(StrEnum):
    """What the network predicts."""

    EPS = "eps"  # the noise
    X_START = "x_start"  # the clean image x_0
    V = "v"  # v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022)


class VarType(StrEnum):
    """The reverse-process variance."""

    FIXED_SMALL = "fixed_small"  # the posterior variance beta~_t
    FIXED_LARGE = "fixed_large"  # beta_t (with beta~_1 at t = 1)
    LEARNED_RANGE = "learned_range"  # a learned interpolation between the two, in log space (Nichol & Dhariwal)


class LossType(StrEnum):
    SIMPLE = "simple"  # L_simple: MSE on the predicted target
    VLB = "vlb"  # the variational bound terms only
    HYBRID = "hybrid"  # L_simple + vlb_weight * L_vlb (the variance trained through L_vlb only)


class LikelihoodEstimator(StrEnum):
    EXACT = "exact"  # every timestep
    SAMPLED = "sampled"  # K uniform timesteps
    STRATIFIED = "stratified"  # K log-stratified timesteps


class Sampler(StrEnum):
    ANCESTRAL = "ancestral"
    DDIM = "ddim"
    SDE = "sde"
    ODE = "ode"
    PC = "pc"  # predictor-corrector: a reverse-process predictor + Langevin corrector steps


class PCPredictor(StrEnum):
    """The predictor of the ``pc`` sampler."""

    SDE = "sde"  # one Euler-Maruyama step of the reverse-time SDE
    ANCESTRAL = "ancestral"  # one ancestral (posterior) step


def values(mode: type[StrEnum]) -> tuple[str, ...]:
    """The accepted config strings of ``mode``, in declaration order."""
    return tuple(m.value for m in mode)


def parse(mode: type[StrEnum], value: str, what: str) -> str:
    """``value`` checked against ``mode``; a clear error listing the valid strings otherwise."""
    if value not in values(mode):
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(values(mode))}")
    return str(value)
