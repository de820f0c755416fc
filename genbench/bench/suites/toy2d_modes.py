"""Toy-2D suite (continuous points): ``mode_coverage`` of the shared samples under the known density, and
``fid`` marked unavailable (no image features; the likelihood suite reports ``nll_nats``)."""

from __future__ import annotations

from typing import Any

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, unavailable
from genbench.capabilities import POINTS
from genbench.data.toy2d import make_toy2d
from genbench.metrics import table as T
from genbench.metrics.modes import mode_coverage


class Toy2DModesSuite(Suite):
    name = "toy2d_modes"
    data_kinds = (POINTS,)

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.num_samples > 0

    def samples_needed(self, cfg: EvalConfig) -> int:
        return cfg.num_samples

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        return {T.FID: unavailable(f"continuous 2-D data: no image features (see {T.NLL_NATS})"),
                T.MODE_COVERAGE: mode_coverage(ctx.samples[: ctx.cfg.num_samples], make_toy2d(ctx.datamodule.dataset))}
