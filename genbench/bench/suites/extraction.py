"""Extraction suite (images): the share of the memorization samples flagged as copies of a training image by the
calibrated nearest-neighbour criterion, its threshold chosen on held-out validation images
(:func:`genbench.metrics.extraction.extraction_suite`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext
from genbench.capabilities import IMAGES
from genbench.metrics.extraction import extraction_suite


class ExtractionSuite(Suite):
    name = "extraction"
    data_kinds = (IMAGES,)

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.memorization_samples > 0

    def samples_needed(self, cfg: EvalConfig) -> int:
        return cfg.memorization_samples

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        domain_cache = None if ctx.cache_dir is None else str(Path(ctx.cache_dir) / "domain")
        return extraction_suite(ctx.samples[: ctx.cfg.memorization_samples], ctx.datamodule,
                                domain="domain" in ctx.cfg.sample_metrics and ctx.datamodule.num_classes >= 2,
                                domain_cache_dir=domain_cache)
