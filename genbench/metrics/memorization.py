"""Memorisation check: how close samples come to the training set, against held-out real images.

For each query image the Euclidean (L2) distance to its nearest training image is computed in pixel space,
with pixels scaled to [0, 1] (``k / (L-1)``). Samples are compared with as many test images: a model that
copies its training data has samples much closer to the training set than test images are
(``ratio = mean_nn_l2_samples / mean_nn_l2_test`` well below 1), and ``exact_copies`` counts samples equal
to a training image.

The nearest neighbour is searched with a matrix product in float32 (fast), then its distance is recomputed
exactly in float64, so an exact copy reports 0.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from genbench.metrics.likelihood import mean_and_stderr


def _flat(x: torch.Tensor, num_levels: int) -> torch.Tensor:
    x = x.reshape(len(x), -1)
    if num_levels > 0:
        return x.to(torch.float64) / (num_levels - 1)
    return x.to(torch.float64)


def nearest_neighbor_l2(
    queries: torch.Tensor, reference: torch.Tensor, num_levels: int = 256, batch_size: int = 1024,
    reference_chunk: int = 4096, progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (float64 ``[N]``) and index (int64 ``[N]``) of each query's nearest reference row."""
    if queries.shape[1:] != reference.shape[1:]:
        raise ValueError(f"queries {list(queries.shape)} and reference {list(reference.shape)} differ in shape")
    if len(reference) == 0:
        raise ValueError("reference set is empty")
    q64 = _flat(queries, num_levels)
    q32 = q64.to(torch.float32)
    best_d = torch.full((len(q32),), float("inf"))
    best_i = torch.zeros(len(q32), dtype=torch.long)
    with tqdm(total=len(reference), desc="nearest neighbours", unit="img", disable=not progress, leave=False) as bar:
        for rs in range(0, len(reference), reference_chunk):
            r32 = _flat(reference[rs:rs + reference_chunk], num_levels).to(torch.float32)
            r_norm = (r32 * r32).sum(1)
            for qs in range(0, len(q32), batch_size):
                # |q - r|^2 - |q|^2: the query norm does not change the argmin
                d2 = r_norm[None] - 2.0 * q32[qs:qs + batch_size] @ r32.T
                d, i = d2.min(1)
                better = d < best_d[qs:qs + batch_size]
                best_d[qs:qs + batch_size] = torch.where(better, d, best_d[qs:qs + batch_size])
                best_i[qs:qs + batch_size] = torch.where(better, i + rs, best_i[qs:qs + batch_size])
            bar.update(len(r32))
    exact = (q64 - _flat(reference[best_i], num_levels)).pow(2).sum(1).sqrt()
    return exact, best_i


def memorization_report(
    samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor, num_levels: int = 256, progress: bool = False
) -> dict[str, Any]:
    """Nearest-training-image distances of samples vs of test images (same count), with their ratio."""
    m = min(len(samples), len(test))
    if m == 0:
        raise ValueError("memorization_report needs at least one sample and one test image")
    d_samples, _ = nearest_neighbor_l2(samples[:m], train, num_levels, progress=progress)
    d_test, _ = nearest_neighbor_l2(test[:m], train, num_levels, progress=progress)
    mean_s, se_s = mean_and_stderr(d_samples)
    mean_t, se_t = mean_and_stderr(d_test)
    return {
        "mean_nn_l2_samples": mean_s,
        "stderr_nn_l2_samples": se_s,
        "mean_nn_l2_test": mean_t,
        "stderr_nn_l2_test": se_t,
        "ratio": mean_s / mean_t if mean_t > 0 else float("nan"),
        "min_nn_l2_samples": float(d_samples.min()),
        "exact_copies": int((d_samples == 0).sum()),
        "n": m,
        "reference": "train",
        "n_reference": len(train),
        "space": "pixels scaled to [0, 1]" if num_levels > 0 else "data space",
    }
