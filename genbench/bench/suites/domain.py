"""Domain suite (labelled image data): ``domain_fd``, ``domain_fd_floor`` and ``class_coverage`` of the shared
samples in a small classifier's features (:mod:`genbench.metrics.domain`; never FID)."""

from __future__ import annotations

from typing import Any

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, floor_subset, unavailable
from genbench.capabilities import IMAGES
from genbench.metrics import table as T
from genbench.metrics.domain import domain_metrics


class DomainSuite(Suite):
    name = "domain"
    data_kinds = (IMAGES,)

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.num_samples > 0 and "domain" in cfg.sample_metrics

    def samples_needed(self, cfg: EvalConfig) -> int:
        return cfg.num_samples

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        dm, cfg = ctx.datamodule, ctx.cfg
        if dm.num_classes < 2:
            return {T.DOMAIN_FD: unavailable(f"{dm.dataset} has no class labels to train a domain classifier")}
        extractor = ctx.domain_extractor()
        samples = ctx.samples[: cfg.num_samples]
        n = len(samples)
        ref = dm.split(cfg.reference_split)[0][:n]
        _, floor = floor_subset(dm, cfg, n)  # the same real images as the FID floor
        out = domain_metrics(samples, ref, floor if len(floor) == n else None, extractor)
        for entry in out.values():
            entry["reference_split"] = cfg.reference_split
        return out
