"""Memorization suite (images): nearest-training-image L2 distances of ``memorization_samples`` shared samples
against those of as many test images (:func:`genbench.metrics.memorization.memorization_report`)."""

from __future__ import annotations

from typing import Any

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext
from genbench.capabilities import IMAGES
from genbench.metrics import table as T
from genbench.metrics.memorization import memorization_report


class MemorizationSuite(Suite):
    name = "memorization"
    data_kinds = (IMAGES,)

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.memorization_samples > 0

    def samples_needed(self, cfg: EvalConfig) -> int:
        return cfg.memorization_samples

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        n = ctx.cfg.memorization_samples
        train_x, test_x = ctx.datamodule.split("train")[0], ctx.datamodule.split("test")[0]
        return {T.MEMORIZATION: memorization_report(ctx.samples[:n], train_x, test_x[:n], ctx.model.num_levels,
                                                    ctx.progress)}
