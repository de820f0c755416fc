"""Sample-based distances to a target whose log-density is known exactly (the toy 2-D densities).

* :func:`kl_to_target`: KL(p || q) = -H(p) - E_p[log q] for samples of p and the exact log q: the cross term
  is exact up to Monte Carlo noise, the entropy of p is the Kozachenko-Leonenko k-nearest-neighbour estimate
  (neighbour search by scipy's cKDTree). Its bias is measured by applying it to samples of q itself
  (the estimate then targets 0).
* :func:`energy_distance`: 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo), the MMD of the distance
  kernel, >= 0 with equality iff the laws agree. scipy's ``energy_distance`` is one-dimensional only, hence
  this short torch version (within-sample terms as U-statistics, computed in row blocks to bound memory).
"""

from __future__ import annotations

import math

import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln


def knn_entropy_nats(x: torch.Tensor, k: int = 5) -> float:
    """Kozachenko-Leonenko estimate of the differential entropy (nats) of the law of ``x`` [N, D]."""
    points = x.detach().to(torch.float64).cpu().numpy()
    n, d = points.shape
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < N for the k-NN entropy, got k={k}, N={n}")
    dist, _ = cKDTree(points).query(points, k=k + 1)  # the first neighbour is the point itself
    radius = dist[:, -1]
    if (radius <= 0).any():
        raise ValueError("duplicate samples: the k-NN entropy needs k distinct neighbours per point (raise k)")
    log_unit_ball = 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d + 1.0))
    return float(digamma(n) - digamma(k) + log_unit_ball + d * torch.from_numpy(radius).log().mean())


def kl_to_target(x: torch.Tensor, target_log_prob: torch.Tensor, k: int = 5) -> float:
    """KL(p || q) in nats from samples ``x`` of p and ``target_log_prob`` = log q(x) of the same samples.

    Samples with log q = -inf (outside the target's support) make the divergence infinite.
    """
    lp = target_log_prob.to(torch.float64)
    if lp.shape != (x.shape[0],):
        raise ValueError(f"target_log_prob must be [{x.shape[0]}], got {list(lp.shape)}")
    if bool(torch.isneginf(lp).any()):
        return math.inf
    return -knn_entropy_nats(x, k) - float(lp.mean())


def _mean_distance(a: torch.Tensor, b: torch.Tensor, same: bool, block: int = 2048) -> float:
    total = 0.0
    for i in range(0, a.shape[0], block):
        total += float(torch.cdist(a[i : i + block], b).sum())
    count = a.shape[0] * (b.shape[0] - 1) if same else a.shape[0] * b.shape[0]
    return total / count  # the diagonal of a self-distance matrix is 0, so dropping it is a count change


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance between the laws of samples ``x`` [N, D] and ``y`` [M, D] (unbiased within terms)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or min(x.shape[0], y.shape[0]) < 2:
        raise ValueError(f"need two sample sets [N, D], [M, D] with N, M >= 2, got {list(x.shape)}, {list(y.shape)}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    return 2.0 * _mean_distance(x, y, False) - _mean_distance(x, x, True) - _mean_distance(y, y, True)
