"""Extraction suite (images): the share of the memorization samples flagged as copies of a training image by the
calibrated nearest-neighbour criterion, its threshold chosen on held-out validation images
(:func:`genbench.metrics.extraction.extraction_suite`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genbench.bench.suites.context import EvalContext
from genbench.bench.suites.memorization import MemorizationSuite
from genbench.metrics.extraction import extraction_suite


class ExtractionSuite(MemorizationSuite):
    """Runs on the memorization suite's samples, whenever that suite does."""

    name = "extraction"

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        domain_cache = None if ctx.cache_dir is None else str(Path(ctx.cache_dir) / "domain")
        return extraction_suite(ctx.samples[: ctx.cfg.memorization_samples], ctx.datamodule,
                                domain="domain" in ctx.cfg.sample_metrics and ctx.datamodule.num_classes >= 2,
                                domain_cache_dir=domain_cache)
