"""Extraction suite (images): the share of the memorization samples flagged as copies of a training image by the
calibrated nearest-neighbour criterion, its threshold chosen on held-out validation images
(:func:`genbench.metrics.extraction.extraction_suite`). With ``ctx.extraction_figure`` set it also saves the
flagged samples (or, when none is flagged, the closest ones) above their nearest training images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genbench.bench.suites.context import EvalContext
from genbench.bench.suites.memorization import MemorizationSuite
from genbench.metrics.extraction import extraction_suite, public_entry, save_flagged_figure
from genbench.metrics.table import EXTRACTION_RATE


class ExtractionSuite(MemorizationSuite):
    """Runs on the memorization suite's samples, whenever that suite does."""

    name = "extraction"

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        domain_cache = None if ctx.cache_dir is None else str(Path(ctx.cache_dir) / "domain")
        samples = ctx.samples[: ctx.cfg.memorization_samples]
        figure = ctx.extraction_figure
        result = extraction_suite(samples, ctx.datamodule,
                                  domain="domain" in ctx.cfg.sample_metrics and ctx.datamodule.num_classes >= 2,
                                  domain_cache_dir=domain_cache, keep_arrays=figure is not None)
        if figure is None:
            return result
        entry = result[EXTRACTION_RATE]
        save_flagged_figure(samples, ctx.datamodule.split("train")[0], entry, figure,
                            num_levels=ctx.datamodule.num_levels, title="samples above their nearest training image")
        entry = public_entry(entry)
        if "domain" in entry:
            entry["domain"] = public_entry(entry["domain"])
        return {EXTRACTION_RATE: {**entry, "figure": figure.name}}
