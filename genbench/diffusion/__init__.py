"""The Gaussian diffusion process (Ho et al. 2020): schedules, q/p math, losses, the bound and samplers.

Nothing here knows about networks, labels or Lightning: the reverse model is any callable
``model(x_t, t) -> output``.
"""

from genbench.diffusion.gaussian_diffusion import (
    LIKELIHOOD_ESTIMATORS,
    LOSS_TYPES,
    MODEL_OUTPUTS,
    VAR_TYPES,
    GaussianDiffusion,
)
from genbench.diffusion.modes import LikelihoodEstimator, LossType, ModelOutput, Sampler, VarType
from genbench.diffusion.samplers import SAMPLERS, sample
from genbench.diffusion.schedules import SCHEDULES, make_betas, space_timesteps

__all__ = [
    "LIKELIHOOD_ESTIMATORS",
    "LOSS_TYPES",
    "MODEL_OUTPUTS",
    "SAMPLERS",
    "SCHEDULES",
    "VAR_TYPES",
    "GaussianDiffusion",
    "LikelihoodEstimator",
    "LossType",
    "ModelOutput",
    "Sampler",
    "VarType",
    "make_betas",
    "sample",
    "space_timesteps",
]
