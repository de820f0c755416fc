"""Reference likelihoods any model must beat, computed from the data itself."""

from __future__ import annotations

import math

import torch


def pixel_histogram_bpd(train_x: torch.Tensor, test_x: torch.Tensor, levels: int, pseudocount: float = 1.0) -> float:
    """Bits/dim of an independent per-pixel categorical fitted on ``train_x`` and scored on ``test_x``.

    Each pixel position has its own histogram over the ``levels`` grey values, smoothed by adding
    ``pseudocount`` to every bin. A likelihood model that does not beat this has learned less than the
    pixel histograms.
    """
    if train_x.dtype != torch.uint8 or test_x.dtype != torch.uint8:
        raise TypeError("pixel_histogram_bpd takes uint8 images")
    d = train_x[0].numel()
    tr = train_x.reshape(len(train_x), d).long()
    te = test_x.reshape(len(test_x), d).long()
    counts = torch.full((d, levels), pseudocount, dtype=torch.float64)
    counts.scatter_add_(1, tr.T.contiguous(), torch.ones(tr.T.shape, dtype=torch.float64))
    log_p = torch.log(counts / counts.sum(1, keepdim=True))  # [d, levels]
    ll = log_p.gather(1, te.T.contiguous()).sum(0)  # [N] nats
    return float(-ll.mean() / (d * math.log(2.0)))
