"""Sampler-sweep suite (images, models that declare adjustable sampler steps): ``fid_vs_steps``, FID at
``num_samples`` for each of ``sampler_steps_sweep`` (same seeds) against the shared real features. A sweep
configured for a model without the capability is rejected before any work (before training in a bench)."""

from __future__ import annotations

from typing import Any

import torch

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, draw_samples
from genbench.capabilities import IMAGES, SAMPLER_STEPS
from genbench.metrics import fidelity
from genbench.metrics import table as T


class SamplerSweepSuite(Suite):
    name = "sampler_sweep"
    data_kinds = (IMAGES,)
    capabilities = (SAMPLER_STEPS,)
    on_missing_capability = "error"
    per_rank = True  # every rank draws its share of each step count's samples

    def requested(self, cfg: EvalConfig) -> bool:
        return bool(cfg.sampler_steps_sweep) and cfg.num_samples > 0 and "fid" in cfg.sample_metrics

    def missing_capability_error(self, model: Any, missing: set[str]) -> str:
        return (f"evaluation.sampler_steps_sweep is set, but {type(model).__name__} has no adjustable number of "
                "sampler steps (it does not declare adjustable_sampling_steps); remove sampler_steps_sweep from "
                "its evaluation config (e.g. -- --evaluation.sampler_steps_sweep=[])")

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        model, cfg, ranks = ctx.model, ctx.cfg, ctx.ranks
        original = model.sampler_info().get("steps")
        sweep: list[dict[str, Any]] = []
        try:
            for steps in cfg.sampler_steps_sweep:
                model.set_sampling_steps(int(steps))
                with torch.no_grad():
                    samples, timing = draw_samples(model, cfg, cfg.num_samples, ranks, ctx.progress)
                if not ranks.is_zero:
                    continue
                feats, _ = fidelity.extract_features(samples, ctx.extractor(), model.num_levels,
                                                     cfg.feature_batch_size, ctx.progress,
                                                     desc=f"features ({steps} steps)")
                ref_feats, _ = ctx.reference_features(len(samples))
                sweep.append({"steps": int(steps), "fid": fidelity.fid_from_features(feats, ref_feats),
                              "n": len(samples), "images_per_s": timing.get("images_per_s"),
                              "sampler": timing.get("sampler")})
        finally:
            if original is not None:
                model.set_sampling_steps(int(original))
        return {T.FID_VS_STEPS: sweep} if ranks.is_zero else {}
