"""What class conditioning promises, measured: p(x | y) against p(x), and samples of class y against class y.

* **label information**: per test image, ``log p(x | y) - log p(x)`` in bits/dim, with y the image's own label.
  Because p(x) = sum_y p(y) p(x | y) >= p(y) p(x | y), the difference is at most ``-log2 p(y) / D``: for K
  balanced classes ``log2(K) / D`` bits/dim (0.0042 for MNIST: 3.3 bits per image over 784 pixels). A model
  whose p(x) is the exact marginal of its p(x | y) (a flow with a class-conditional base) meets it for every
  image; with bounds on both sides (VAE, DDPM) the difference of two bounds can leave it, and how far says how
  loose the bounds are relative to each other.
* **conditional accuracy**: the share of samples drawn for class y that the dataset's domain classifier
  (:mod:`genbench.metrics.domain`) assigns to y, overall and per class; a class "is produced" when at least
  half its samples are recognised as it.
* **per-class Fréchet distance**: the domain FD between the samples of class y and as many test images of class
  y, averaged over classes, beside the real-vs-real floor at the same n: fidelity and diversity within a class
  (a model that draws one good 7 for every "7" has high accuracy and a high per-class FD).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from genbench.metrics.fidelity import fid_from_features
from genbench.metrics.likelihood import mean_and_stderr

RECOGNISED_SHARE = 0.5  # a class is produced when at least this share of its samples is classified as it


def label_information(log_px_given_y: torch.Tensor, log_px: torch.Tensor, num_dims: int,
                      num_classes: int) -> dict[str, Any]:
    """``log p(x|y) - log p(x)`` per image (nats in, bits/dim out) against its bound ``log2(K) / D``."""
    if log_px_given_y.shape != log_px.shape:
        raise ValueError(f"need paired log-likelihoods, got shapes {list(log_px_given_y.shape)} and {list(log_px.shape)}")
    diff_nats = (log_px_given_y - log_px).to(torch.float64)
    finite = torch.isfinite(diff_nats)
    bits_per_dim = diff_nats[finite] / (num_dims * math.log(2.0))
    mean, se = mean_and_stderr(bits_per_dim)
    bound = math.log2(num_classes) / num_dims
    over = int((bits_per_dim > bound + 1e-9).sum())
    return {
        "value": mean, "stderr": se, "bound": bound,
        "within_bound": bool(mean <= bound),
        "images_over_bound": over, "n": int(finite.sum()), "n_nonfinite": int((~finite).sum()),
        "max": float(bits_per_dim.max()) if len(bits_per_dim) else float("nan"),
        "min": float(bits_per_dim.min()) if len(bits_per_dim) else float("nan"),
        "definition": "mean over test images of (log p(x|y) - log p(x)) / (D ln 2), y the image's label; "
                      "at most log2(K)/D when p(x) is the marginal of p(x|y) under a uniform class prior",
    }


def per_class_bpd(nll_nats: torch.Tensor, labels: torch.Tensor, num_dims: int, num_classes: int) -> list[float | None]:
    """Mean bits/dim of the images of each class (None for a class without images)."""
    bpd = nll_nats.to(torch.float64) / (num_dims * math.log(2.0))
    return [float(bpd[labels == c].mean()) if bool((labels == c).any()) else None for c in range(num_classes)]


def conditional_accuracy(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """The classifier's agreement with the requested ``labels`` (probabilities ``[N, K]``), overall and per class."""
    predicted = probs.argmax(1)
    hit = (predicted == labels).to(torch.float64)
    per_class = [float(hit[labels == c].mean()) if bool((labels == c).any()) else None for c in range(num_classes)]
    produced = [c for c, a in enumerate(per_class) if a is not None and a >= RECOGNISED_SHARE]
    return {
        "value": float(hit.mean()), "per_class": per_class, "chance": 1.0 / num_classes,
        "classes_produced": len(produced), "num_classes": num_classes,
        "produced_rule": f"at least {RECOGNISED_SHARE:.0%} of a class's samples are classified as that class",
        "mean_confidence_in_requested_class": float(probs[torch.arange(len(labels)), labels].mean()),
        "n": len(labels),
    }


def class_fd(sample_feats: torch.Tensor, sample_labels: torch.Tensor, ref_feats: torch.Tensor,
             ref_labels: torch.Tensor, floor_feats: torch.Tensor | None = None,
             floor_labels: torch.Tensor | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Fréchet distance between each class's sample and reference features, its mean over classes, and the
    same for real ``floor`` images of each class against the reference (the value a perfect model reaches at
    that n). Classes with fewer than 2 images on either side are left out (listed as None)."""
    k = int(num_classes if num_classes is not None else int(sample_labels.max()) + 1)

    def per_class(feats: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
        out: list[float | None] = []
        for c in range(k):
            a, b = feats[labels == c], ref_feats[ref_labels == c]
            out.append(fid_from_features(a, b) if len(a) >= 2 and len(b) >= 2 else None)
        return out

    values = per_class(sample_feats, sample_labels)
    scored = [v for v in values if v is not None]
    entry: dict[str, Any] = {
        "value": sum(scored) / len(scored) if scored else float("nan"), "per_class": values,
        "classes_scored": len(scored), "n_per_class": int(torch.bincount(sample_labels, minlength=k).min()),
    }
    if floor_feats is not None and floor_labels is not None:
        floor = per_class(floor_feats, floor_labels)
        floor_scored = [v for v in floor if v is not None]
        entry.update(floor=sum(floor_scored) / len(floor_scored) if floor_scored else float("nan"), floor_per_class=floor)
    return entry


def first_of_each_class(labels: torch.Tensor, per_class: int, num_classes: int, skip: int = 0) -> torch.Tensor:
    """Indices of the first ``per_class`` examples of every class (after skipping ``skip`` of each), in class order."""
    idx = []
    for c in range(num_classes):
        where = torch.nonzero(labels == c).flatten()
        idx.append(where[skip: skip + per_class])
    return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.int64)
