"""Mode coverage of 2-D samples against a known toy density (the mode-collapse check of GAN papers).

Protocol (Metz et al. 2017; Srivastava et al. 2017, adapted to the :mod:`genbench.data.toy2d` densities):

* a sample is **high quality** when it lies within ``HIGH_QUALITY_STDS = 3`` standard deviations of some
  mixture component's centre (``checkerboard``: inside one of its black cells);
* each high-quality sample is assigned to its nearest component, and components are grouped into the
  density's modes: ``eight_gaussians`` has 8 modes (one per component), ``two_moons`` 2 (each moon is 50
  components along an arc), ``checkerboard`` 8 (its black cells);
* a mode is **recovered** when it holds at least ``MIN_SHARE_OF_UNIFORM = 0.25`` of a fair share of all
  samples, i.e. ``count / n >= 0.25 / num_modes`` (eight_gaussians: 3.1 % of the samples, two_moons: 12.5 %).

Metric names are the keys of the returned dict.
"""

from __future__ import annotations

import torch

from genbench.data.toy2d import Checkerboard, GaussianMixture2D, Toy2D, TwoMoons

MODES_RECOVERED = "modes_recovered"
NUM_MODES = "num_modes"
HIGH_QUALITY_FRACTION = "high_quality_fraction"

HIGH_QUALITY_STDS = 3.0
MIN_SHARE_OF_UNIFORM = 0.25


def _mode_of_component(density: GaussianMixture2D) -> torch.Tensor:
    k = density.centers.shape[0]
    if isinstance(density, TwoMoons):
        return (torch.arange(k) >= k // 2).long()  # the same rule as TwoMoons.sample's labels
    return torch.arange(k)


def assign_modes(samples: torch.Tensor, density: Toy2D) -> tuple[torch.Tensor, int]:
    """Mode index of every sample (``-1`` where it is not high quality) and the number of modes."""
    if not isinstance(samples, torch.Tensor) or samples.dim() != 2 or samples.shape[1] != 2:
        raise ValueError(f"samples must be a tensor [N, 2], got {getattr(samples, 'shape', type(samples))}")
    x = samples.detach().double().cpu()
    finite = torch.isfinite(x).all(1)
    x = torch.where(finite[:, None], x, torch.zeros_like(x))
    if isinstance(density, GaussianMixture2D):
        d2 = ((x[:, None, :] - density.centers[None]) ** 2).sum(-1)
        d2_min, nearest = d2.min(1)
        good = finite & (d2_min <= (HIGH_QUALITY_STDS * density.std) ** 2)
        comp_to_mode = _mode_of_component(density)
        mode = comp_to_mode[nearest]
        num_modes = int(comp_to_mode.max()) + 1
    elif isinstance(density, Checkerboard):
        cells = density._cells
        ij = torch.floor(x + 2.0)
        inside = (x.abs() < 2.0).all(1)
        match = (ij[:, None, :] == cells[None]).all(-1)  # [N, 8]
        good = finite & inside & match.any(1)
        mode = match.long().argmax(1)
        num_modes = int(cells.shape[0])
    else:
        raise TypeError(f"mode coverage needs a Gaussian mixture or the checkerboard, got {type(density).__name__}")
    return torch.where(good, mode, torch.full_like(mode, -1)), num_modes


def mode_coverage(samples: torch.Tensor, density: Toy2D) -> dict[str, float | int]:
    """``{"modes_recovered", "num_modes", "high_quality_fraction"}`` of ``samples [N, 2]`` under ``density``."""
    mode, num_modes = assign_modes(samples, density)
    n = mode.shape[0]
    if n == 0:
        raise ValueError("mode coverage needs at least one sample")
    good = mode >= 0
    counts = torch.bincount(mode[good], minlength=num_modes)
    recovered = int((counts.double() / n >= MIN_SHARE_OF_UNIFORM / num_modes).sum())
    return {
        MODES_RECOVERED: recovered,
        NUM_MODES: num_modes,
        HIGH_QUALITY_FRACTION: float(good.double().mean()),
    }
