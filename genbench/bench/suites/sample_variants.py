"""Sample-variant suite (images): ``fid_<variant>`` for every other way the model can draw from the same weights
(:meth:`~genbench.models.base.GenerativeModel.sample_variants`: the VAE's decoder modes beside its pixel draws,
RealNVP's temperature 1 beside a lower declared temperature). Each variant draws ``num_samples`` with the same
seeds as the main sampler and is scored against the same real features; the main ``fid`` column stays the
sampler the config declared before the run."""

from __future__ import annotations

from typing import Any

import torch

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, draw_samples
from genbench.capabilities import IMAGES
from genbench.metrics import fidelity
from genbench.metrics import table as T


class SampleVariantsSuite(Suite):
    name = "sample_variants"
    data_kinds = (IMAGES,)
    per_rank = True  # every rank draws its share of each variant's samples

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.num_samples > 0 and "fid" in cfg.sample_metrics

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        model, cfg, ranks = ctx.model, ctx.cfg, ctx.ranks
        out: dict[str, Any] = {}
        variants = getattr(model, "sample_variants", dict)()  # optional in the contract (genbench.evaluate's wrappers)
        for name, description in variants.items():
            with model.sample_variant(name), torch.no_grad():
                samples, timing = draw_samples(model, cfg, cfg.num_samples, ranks, ctx.progress)
                sampler = model.sampler_info()
            if not ranks.is_zero:
                continue
            feats, _ = fidelity.extract_features(samples, ctx.extractor(), model.num_levels, cfg.feature_batch_size,
                                                 ctx.progress, desc=f"features ({name})")
            ref_feats, n_ref = ctx.reference_features(len(samples))
            out[T.fid_variant(name)] = {
                "value": fidelity.fid_from_features(feats, ref_feats), "n": len(samples), "n_reference": n_ref,
                "reference_split": cfg.reference_split, "variant": name, "description": description,
                "sampler": sampler, "images_per_s": timing.get("images_per_s"),
                **fidelity.describe_extractor(ctx.extractor())}
        return out
