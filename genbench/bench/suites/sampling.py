"""The shared samples: ``n`` = the most any selected suite reads, drawn once (``sampling``: images/s and the
sampler's own description). Seeded and rank-aware: see :func:`genbench.bench.suites.context.draw_samples`."""

from __future__ import annotations

from typing import Any

import torch

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, draw_samples
from genbench.metrics import table as T


class SamplingSuite(Suite):
    name = "sampling"
    per_rank = True  # every rank draws its share; rank 0 holds them all

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.num_samples > 0 or cfg.memorization_samples > 0

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        if ctx.num_samples_to_draw <= 0:
            return {}
        with torch.no_grad():
            ctx.samples, info = draw_samples(ctx.model, ctx.cfg, ctx.num_samples_to_draw, ctx.ranks, ctx.progress)
        return {T.SAMPLING: info}
