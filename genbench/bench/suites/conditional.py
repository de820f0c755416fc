"""Class-conditional suites (labelled images, models that declare ``class_conditional``).

* :class:`ConditionalLikelihoodSuite`: ``bpd_conditional``, -log2 p(x | y) / D of the bits/dim test images with
  their own labels (same images, chunks and seeds as ``bpd``), per class; and ``label_information``, the paired
  per-image difference to the unconditional ``bpd`` against its bound log2(K)/D
  (:mod:`genbench.metrics.conditional`).
* :class:`ConditionalSamplesSuite`: ``conditional_samples_per_class`` samples of every class (labels given,
  seed ``seed``): ``conditional_accuracy`` and ``class_fd`` in the domain classifier's features.
* :class:`GuidanceSweepSuite` (models with classifier-free guidance): ``guidance_sweep``, FID (Inception), domain
  FD and conditional accuracy of ``guidance_num_samples`` class-balanced samples per guidance weight.
"""

from __future__ import annotations

from typing import Any

import torch

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, draw_samples, unavailable
from genbench.bench.suites.likelihood import BitsPerDimSuite
from genbench.capabilities import CLASS_CONDITIONAL, GUIDANCE, IMAGES
from genbench.metrics import fidelity
from genbench.metrics import table as T
from genbench.metrics.conditional import (
    class_fd,
    conditional_accuracy,
    first_of_each_class,
    label_information,
    per_class_bpd,
)


def _conditional(model: Any) -> bool:
    return CLASS_CONDITIONAL in model.capabilities


def class_labels(num_classes: int, n: int) -> torch.Tensor:
    """int64 ``[n]`` cycling through the classes (0, 1, ..., K-1, 0, ...): balanced when K divides n, and every
    prefix as balanced as it can be."""
    return torch.arange(n, dtype=torch.int64) % num_classes


class ConditionalLikelihoodSuite(BitsPerDimSuite):
    """``bpd_conditional`` and ``label_information``; runs after ``bpd`` (whose per-image values it pairs with)."""

    name = "conditional_likelihood"
    main_key = T.BPD_CONDITIONAL

    def applies_to(self, model: Any) -> bool:
        return _conditional(model)

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.conditional_metrics and super().requested(cfg)

    def functions(self, model: Any) -> dict[str | None, Any]:
        return {None: lambda x, y: model.log_likelihood(x, y.to(torch.int64))}

    def unavailable(self, ctx: EvalContext) -> dict[str, Any]:
        reason = f"{type(ctx.model).__name__} defines no density"
        return {self.main_key: unavailable(reason), T.LABEL_INFORMATION: unavailable(reason)}

    def _run(self, ctx: EvalContext) -> dict[str, Any]:
        out = super()._run(ctx)
        entry = out[self.main_key]
        if not entry.get("available", True):
            return {**out, T.LABEL_INFORMATION: unavailable(entry.get("reason", ""))}
        entry["conditioning"] = "each test image's own label"
        log_pxy = ctx.log_likelihoods[self.main_key]
        labels = ctx.datamodule.split(ctx.cfg.likelihood_split)[1][: len(log_pxy)]
        k, d = ctx.datamodule.num_classes, ctx.model.num_dims
        entry["per_class"] = per_class_bpd(-log_pxy, labels, d, k)
        log_px = ctx.log_likelihoods.get(T.BPD)
        if log_px is None or len(log_px) != len(log_pxy):
            out[T.LABEL_INFORMATION] = unavailable("the unconditional bits/dim of the same images was not computed")
        else:
            info = label_information(log_pxy, log_px, d, k)
            info["marginal"] = ctx.model.likelihood_info().get("conditioning", "")
            out[T.LABEL_INFORMATION] = info
        return out


class ConditionalSamplesSuite(Suite):
    """``conditional_accuracy`` and ``class_fd`` of class-balanced samples (every rank draws its share)."""

    name = "conditional_samples"
    data_kinds = (IMAGES,)
    per_rank = True

    def applies_to(self, model: Any) -> bool:
        return _conditional(model)

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.conditional_metrics and cfg.conditional_samples_per_class > 0

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        model, cfg, dm = ctx.model, ctx.cfg, ctx.datamodule
        k, per_class = dm.num_classes, cfg.conditional_samples_per_class
        labels = class_labels(k, k * per_class)
        with torch.no_grad():
            samples, timing = draw_samples(model, cfg, len(labels), ctx.ranks, ctx.progress, labels=labels,
                                           desc="class-conditional samples")
        if not ctx.ranks.is_zero:
            return {}
        extractor = ctx.domain_extractor()
        feats, probs = extractor(samples)
        ref_x, ref_y = dm.split(cfg.reference_split)
        ref_idx = first_of_each_class(ref_y, per_class, k)
        # the floor's real images: training images of each class, disjoint from the reference ones
        train_x, train_y = dm.split("train")
        floor_idx = first_of_each_class(train_y, per_class, k, skip=per_class if cfg.reference_split == "train" else 0)
        ref_feats, _ = extractor(ref_x[ref_idx])
        floor_feats, _ = extractor(train_x[floor_idx])
        common = {"n": len(samples), "samples_per_class": per_class, "reference_split": cfg.reference_split,
                  "seed": cfg.seed, "labels": "class i % K for sample i", **extractor.describe()}
        accuracy = conditional_accuracy(probs, labels, k)
        accuracy["real_test_accuracy"] = extractor.describe().get("test_accuracy")
        fd = class_fd(feats, labels, ref_feats, ref_y[ref_idx], floor_feats, train_y[floor_idx], k)
        return {T.CONDITIONAL_ACCURACY: {**accuracy, **common},
                T.CLASS_FD: {**fd, **common, "sampler": {k_: timing.get(k_) for k_ in ("sampler", "guidance_scale")
                                                         if k_ in timing}}}


class GuidanceSweepSuite(Suite):
    """``guidance_sweep``: one entry per guidance weight of ``guidance_scales`` (same seed and labels each)."""

    name = "guidance_sweep"
    data_kinds = (IMAGES,)
    capabilities = (GUIDANCE,)
    on_missing_capability = "error"
    per_rank = True

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.conditional_metrics and bool(cfg.guidance_scales)

    def missing_capability_error(self, model: Any, missing: set[str]) -> str:
        return (f"evaluation.guidance_scales is set, but {type(model).__name__} has no classifier-free guidance "
                "(a class-conditional DDPM trained with label_dropout > 0 has); remove guidance_scales from its "
                "evaluation config (e.g. -- --evaluation.guidance_scales=[])")

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        model, cfg, dm = ctx.model, ctx.cfg, ctx.datamodule
        k, n = dm.num_classes, cfg.guidance_num_samples
        labels = class_labels(k, n)
        with_fid = "fid" in cfg.sample_metrics
        original = model.current_guidance_scale()
        if ctx.ranks.is_zero:  # the real images' classifier features, shared by every weight
            domain = ctx.domain_extractor()
            ref_feats_d, _ = domain(dm.split(cfg.reference_split)[0][:n])
        sweep: list[dict[str, Any]] = []
        try:
            for scale in cfg.guidance_scales:
                model.set_guidance_scale(float(scale))
                with torch.no_grad():
                    samples, timing = draw_samples(model, cfg, n, ctx.ranks, ctx.progress, labels=labels,
                                                   desc=f"guidance {scale:g}")
                if not ctx.ranks.is_zero:
                    continue
                point: dict[str, Any] = {"scale": float(scale), "n": n, "images_per_s": timing.get("images_per_s")}
                if with_fid:
                    feats, _ = fidelity.extract_features(samples, ctx.extractor(), model.num_levels,
                                                         cfg.feature_batch_size, ctx.progress,
                                                         desc=f"features (guidance {scale:g})")
                    ref_feats, n_ref = ctx.reference_features(n)
                    point[T.FID] = fidelity.fid_from_features(feats, ref_feats)
                    point["n_reference"] = n_ref
                d_feats, probs = domain(samples)
                point[T.DOMAIN_FD] = fidelity.fid_from_features(d_feats, ref_feats_d)
                point["accuracy"] = conditional_accuracy(probs, labels, k)["value"]
                sweep.append(point)
        finally:
            model.set_guidance_scale(original)
        if not ctx.ranks.is_zero:
            return {}
        return {T.GUIDANCE_SWEEP: sweep}
