"""Samplers of the reverse process, all driven by the same ``model(x_t, t) -> output`` callable.

* ``ancestral``: Ho et al. 2020 Algorithm 2, x_{t-1} ~ p(x_{t-1} | x_t); with fewer steps than T it runs
  on the respaced process (strided ancestral sampling, Nichol & Dhariwal 2021).
* ``ddim``: Song et al. 2021 eq. 12 on the respaced steps; ``eta = 0`` is deterministic, ``eta = 1``
  matches the ancestral sampler's variance beta~.
* ``sde``: the variance-preserving SDE dx = -1/2 beta x dtau + sqrt(beta) dW (Song et al. 2021b), whose
  marginals at the grid points are exactly q(x_t | x_0), integrated backwards by Euler-Maruyama with the
  score grad log q(x_t) = -eps / sqrt(1 - abar_t). The natural time is B = -log abar: a step from t to
  s < t has dB = log(abar_s / abar_t) and reads x_s = x_t + dB (x_t / 2 + score) + sqrt(dB) z.
* ``ode``: the probability-flow ODE of the same SDE by Euler steps, x_s = x_t + dB/2 (x_t + score).
* ``pc``: predictor-corrector (Song et al. 2021b): a reverse-SDE or ancestral predictor step, then
  ``corrector_steps`` Langevin steps at the new noise level with the signal-to-noise step rule
  (:func:`genbench.diffusion.langevin.pc_sample`).

Every sampler starts from ``x_T`` when it is given (e.g. a draw of the exact q_T), else from N(0, I).

The SDE and ODE samplers end by denoising with the predicted x_0 at the first step.
"""

from __future__ import annotations

from typing import Any

import torch

from genbench.diffusion.gaussian_diffusion import GaussianDiffusion, Generators, ModelFn, randn
from genbench.diffusion.modes import Sampler, parse, values
from genbench.diffusion.schedules import space_timesteps

SAMPLERS = values(Sampler)


def respaced(diffusion: GaussianDiffusion, num_steps: int) -> GaussianDiffusion:
    """The process on ``num_steps`` evenly spaced steps (the process itself when ``num_steps >= T``)."""
    if num_steps < 1:
        raise ValueError(f"the number of sampling steps must be >= 1, got {num_steps}")
    if num_steps >= diffusion.num_timesteps:
        return diffusion
    return diffusion.respace(space_timesteps(diffusion.num_timesteps, num_steps))


def initial_noise(
    shape: tuple[int, ...], generator: Generators, device: torch.device, dtype: torch.dtype, x_T: torch.Tensor | None
) -> torch.Tensor:
    """The sampler's start: ``x_T`` when given (checked against ``shape``), else N(0, I) draws."""
    if x_T is None:
        return randn(shape, generator, device, dtype)
    if tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {list(x_T.shape)}, the sampler draws {list(shape)}")
    return x_T.to(device, dtype)


def _steps(i: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), i, dtype=torch.int64, device=device)


def ancestral_step(
    diffusion: GaussianDiffusion, model: ModelFn, x: torch.Tensor, i: int, generator: Generators, clip_denoised: bool
) -> torch.Tensor:
    """x_{i-1} ~ p(x_{i-1} | x_i); at i = 0 the mean of p(x_0 | x_1)."""
    out = diffusion.p_mean_variance(model, x, _steps(i, x.shape[0], x.device), clip_denoised=clip_denoised)
    if i == 0:
        return out["mean"]
    return out["mean"] + torch.exp(0.5 * out["log_variance"]) * randn(x.shape, generator, x.device, x.dtype)


def score_view_step(
    diffusion: GaussianDiffusion, model: ModelFn, x: torch.Tensor, i: int, stochastic: bool, generator: Generators
) -> torch.Tensor:
    """One step i -> i - 1 (i >= 1) of the reverse SDE (Euler-Maruyama) or, not ``stochastic``, of the ODE."""
    t = _steps(i, x.shape[0], x.device)
    eps = diffusion.p_mean_variance(model, x, t, clip_denoised=False)["pred_eps"]
    score = diffusion.score_from_eps(eps, t)
    log_abar = torch.log(diffusion.alphas_cumprod)
    d_b = float(log_abar[i - 1] - log_abar[i])
    if stochastic:
        return x + d_b * (0.5 * x + score) + d_b**0.5 * randn(x.shape, generator, x.device, x.dtype)
    return x + 0.5 * d_b * (x + score)


@torch.no_grad()
def ancestral_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = True,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_T ~ N(0, I) (or the given ``x_T``), then x_{t-1} = mean + sigma z for every step of ``diffusion``; the last step returns the mean."""
    device = torch.device(device)
    x = initial_noise(shape, generator, device, dtype, x_T)
    for i in reversed(range(diffusion.num_timesteps)):
        x = ancestral_step(diffusion, model, x, i, generator, clip_denoised)
    return x


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    eta: float = 0.0,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = True,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM: x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z over the steps of ``diffusion``."""
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}")
    device = torch.device(device)
    x = initial_noise(shape, generator, device, dtype, x_T)
    for i in reversed(range(diffusion.num_timesteps)):
        t = _steps(i, shape[0], device)
        out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
        abar = diffusion._extract(diffusion.alphas_cumprod, t, x)
        abar_prev = diffusion._extract(diffusion.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
        x = abar_prev.sqrt() * out["pred_x_start"] + torch.sqrt((1.0 - abar_prev - sigma**2).clamp(min=0.0)) * out["pred_eps"]
        if i > 0 and eta > 0:
            x = x + sigma * randn(shape, generator, device, dtype)
    return x


def _score_view_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    stochastic: bool,
    generator: Generators,
    device: torch.device | str,
    dtype: torch.dtype,
    clip_denoised: bool,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    device = torch.device(device)
    x = initial_noise(shape, generator, device, dtype, x_T)
    for i in reversed(range(1, diffusion.num_timesteps)):
        x = score_view_step(diffusion, model, x, i, stochastic, generator)
    t = _steps(0, shape[0], device)
    return diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)["pred_x_start"]


@torch.no_grad()
def sde_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = True,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse-time VP SDE by Euler-Maruyama over the steps of ``diffusion``."""
    return _score_view_sample(diffusion, model, shape, True, generator, device, dtype, clip_denoised, x_T)


@torch.no_grad()
def ode_sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = True,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probability-flow ODE by Euler steps over the steps of ``diffusion`` (random only through x_T)."""
    return _score_view_sample(diffusion, model, shape, False, generator, device, dtype, clip_denoised, x_T)


def sample(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    shape: tuple[int, ...],
    sampler: str = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_denoised: bool = True,
    x_T: torch.Tensor | None = None,
    pc_predictor: str = "sde",
    pc_corrector_steps: int = 1,
    pc_snr: float = 0.16,
) -> torch.Tensor:
    """Draw ``shape`` samples in model space with ``sampler`` on ``num_steps`` evenly spaced steps.

    ``pc_predictor``, ``pc_corrector_steps`` and ``pc_snr`` configure the ``pc`` sampler only.
    """
    sampler = Sampler(parse(Sampler, sampler, "sampler"))
    process = respaced(diffusion, num_steps)
    kwargs = {"generator": generator, "device": device, "dtype": dtype, "clip_denoised": clip_denoised, "x_T": x_T}
    if sampler == Sampler.DDIM:  # the one sampler with a stochasticity knob
        kwargs["eta"] = eta
    if sampler == Sampler.PC:
        from genbench.diffusion.langevin import pc_sample  # langevin builds on this module's samplers

        return pc_sample(process, model, shape, predictor=pc_predictor, corrector_steps=pc_corrector_steps,
                         snr=pc_snr, **kwargs)
    return SAMPLER_FUNCTIONS[sampler](process, model, shape, **kwargs)


# One entry per single-pass sampler: function(process, model, shape, *, generator, device, dtype, clip_denoised,
# x_T, ...); the predictor-corrector sampler composes these and lives in langevin.py.
SAMPLER_FUNCTIONS = {
    Sampler.ANCESTRAL: ancestral_sample,
    Sampler.DDIM: ddim_sample,
    Sampler.SDE: sde_sample,
    Sampler.ODE: ode_sample,
}


def sampler_options(hparams: Any) -> dict[str, Any]:
    """The :func:`sample` keywords named by a model's hyperparameters (``sampler``, ``sampling_steps``,
    ``ddim_eta``, ``pc_predictor``, ``pc_corrector_steps``, ``pc_snr``: DDPM's and LDM's names)."""
    return {"sampler": hparams.sampler, "num_steps": hparams.sampling_steps, "eta": hparams.ddim_eta,
            "pc_predictor": hparams.pc_predictor, "pc_corrector_steps": hparams.pc_corrector_steps,
            "pc_snr": hparams.pc_snr}


def sampler_record(hparams: Any, num_timesteps: int) -> dict[str, Any]:
    """What a record says of the sampler :func:`sampler_options` selects: its name, steps (at most T), the
    DDIM eta or the predictor-corrector settings, and ``network_evaluations`` of one sampling pass."""
    steps = min(int(hparams.sampling_steps), int(num_timesteps))
    info: dict[str, Any] = {"sampler": hparams.sampler, "steps": steps, "T": int(num_timesteps)}
    evaluations = steps
    if hparams.sampler == Sampler.DDIM:
        info["eta"] = hparams.ddim_eta
    if hparams.sampler == Sampler.PC:
        from genbench.diffusion.langevin import pc_network_evaluations

        info.update(predictor=hparams.pc_predictor, corrector="langevin",
                    corrector_steps=hparams.pc_corrector_steps, snr=hparams.pc_snr)
        evaluations = pc_network_evaluations(steps, hparams.pc_corrector_steps)
    info["network_evaluations"] = evaluations
    return info
