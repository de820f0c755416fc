"""Analytic 2-D densities with exact ``log_prob``, so a model's NLL can be compared with the true entropy.

Each density samples with a ``torch.Generator`` and evaluates ``log_prob`` (float64, nats) in closed form:

* ``eight_gaussians``: eight isotropic Gaussians (std 0.15) on a circle of radius 2, equal weights;
* ``two_moons``: two interleaved half circles, as a mixture of 100 isotropic Gaussians (std 0.1) evenly
  spaced along the arcs (the classic construction with a closed-form density);
* ``checkerboard``: uniform on the 8 black cells of a 4x4 board covering [-2, 2]^2 (entropy log 8).

These are continuous data: their NLL is the differential entropy in nats (no dequantization, no bpd).
"""

from __future__ import annotations

import math

import torch


class Toy2D:
    name: str = ""
    num_classes: int = 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def entropy(self, n: int = 200_000, seed: int = 12345) -> tuple[float, float]:
        """Differential entropy in nats and its Monte Carlo standard error (0 where it is exact)."""
        g = torch.Generator().manual_seed(seed)
        x, _ = self.sample(n, g)
        lp = self.log_prob(x.double())
        return float(-lp.mean()), float(lp.std() / math.sqrt(n))


class GaussianMixture2D(Toy2D):
    def __init__(self, centers: torch.Tensor, std: float) -> None:
        self.centers = centers.double()
        self.std = float(std)
        self.num_classes = int(centers.shape[0])

    def sample(self, n, generator=None):
        k = torch.randint(0, self.centers.shape[0], (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.centers[k] + self.std * noise).float(), k

    def log_prob(self, x):
        x = x.double()
        d2 = ((x[:, None, :] - self.centers[None]) ** 2).sum(-1)
        log_comp = -0.5 * d2 / self.std**2 - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_comp, dim=1) - math.log(self.centers.shape[0])


class EightGaussians(GaussianMixture2D):
    name = "eight_gaussians"
    num_classes = 8

    def __init__(self) -> None:
        a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        super().__init__(2.0 * torch.stack([torch.cos(a), torch.sin(a)], 1), std=0.15)


class TwoMoons(GaussianMixture2D):
    name = "two_moons"
    num_classes = 2

    def __init__(self, per_moon: int = 50) -> None:
        t = torch.linspace(0, math.pi, per_moon, dtype=torch.float64)
        upper = torch.stack([torch.cos(t), torch.sin(t)], 1)
        lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], 1)
        centers = torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)
        super().__init__(1.5 * centers, std=0.1)
        self.num_classes = 2

    def sample(self, n, generator=None):
        x, k = super().sample(n, generator)
        return x, (k >= self.centers.shape[0] // 2).long()


class Checkerboard(Toy2D):
    name = "checkerboard"
    num_classes = 8

    # black cells (i, j) of a 4x4 board over [-2, 2]^2: i + j even
    _cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float64)

    def sample(self, n, generator=None):
        k = torch.randint(0, 8, (n,), generator=generator)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return (self._cells[k] + u - 2.0).float(), k

    def log_prob(self, x):
        x = x.double()
        inside = (x.abs() < 2.0).all(1)
        ij = torch.floor(x + 2.0)
        black = ((ij[:, 0] + ij[:, 1]) % 2 == 0) & inside
        return torch.where(black, torch.full_like(x[:, 0], -math.log(8.0)), torch.full_like(x[:, 0], -math.inf))

    def entropy(self, n: int = 0, seed: int = 0) -> tuple[float, float]:
        return math.log(8.0), 0.0


TOY2D = {cls.name: cls for cls in (EightGaussians, TwoMoons, Checkerboard)}


def make_toy2d(name: str) -> Toy2D:
    if name not in TOY2D:
        raise ValueError(f"unknown toy2d density {name!r}; valid: {', '.join(sorted(TOY2D))}")
    return TOY2D[name]()
