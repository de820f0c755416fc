"""Training schedules shared by the models: the EMA of weights and the linear learning-rate warm-up."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def ema_decay_at(decay: float, step: int, warmup: bool = True) -> float:
    """The EMA decay after ``step`` updates: ``min(decay, (1 + step) / (10 + step))`` when warmed up, so
    the average forgets its random start quickly (the schedule of the TensorFlow EMA with num_updates)."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: Iterable[torch.Tensor], live: Iterable[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * live`` in place, tensor by tensor (``live`` cast to ema's dtype)."""
    for ema_t, t in zip(ema, live, strict=True):
        ema_t.lerp_(t.detach().to(ema_t.dtype), 1.0 - decay)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """The learning-rate factor of a linear warm-up: ``(step + 1) / warmup_steps``, then 1."""
    return min(1.0, (step + 1) / max(1, warmup_steps))
