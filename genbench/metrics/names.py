"""Metric names: the keys of :func:`genbench.bench.evaluate.evaluate`'s result, shared by the harness, the
result record and the leaderboard. Change a name here and everything that reads it follows."""

from __future__ import annotations

BPD = "bpd"  # bits/dim of the model's main log_likelihood (exact or a bound: see its "kind")
BPD_VARIANT_PREFIX = "bpd_"  # bpd_<name> for each entry of model.likelihood_variants()
NLL_NATS = "nll_nats"  # continuous data (toy2d): mean NLL in nats, beside the density's true entropy
FID = "fid"
KID = "kid"
PRECISION = "precision"
RECALL = "recall"
INCEPTION_SCORE = "inception_score"
FID_FLOOR = "fid_floor"  # real-vs-real FID at the same n (train subset vs the reference split)
MEMORIZATION = "memorization"
SAMPLING = "sampling"
FID_VS_STEPS = "fid_vs_steps"  # [{"steps", "fid", "n"}] for iterative samplers
MODE_COVERAGE = "mode_coverage"  # toy2d mixtures: modes recovered and the share of high-quality samples
DOMAIN_FD = "domain_fd"  # Fréchet distance in a small domain classifier's features (labelled; never FID)
DOMAIN_FD_FLOOR = "domain_fd_floor"  # its real-vs-real floor at the same n
CLASS_COVERAGE = "class_coverage"  # predicted-class histogram of samples vs real images (TV distance)

SAMPLE_QUALITY = (FID, KID, PRECISION, RECALL, INCEPTION_SCORE, FID_FLOOR, DOMAIN_FD, DOMAIN_FD_FLOOR, CLASS_COVERAGE)
LOWER_IS_BETTER = {BPD: True, NLL_NATS: True, FID: True, KID: True, PRECISION: False, RECALL: False,
                   INCEPTION_SCORE: False, FID_FLOOR: True, DOMAIN_FD: True, DOMAIN_FD_FLOOR: True,
                   CLASS_COVERAGE: True}


def bpd_variant(name: str) -> str:
    """Metric name of a likelihood variant, e.g. ``bpd_elbo``."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"likelihood variant names must be alphanumeric/underscore, got {name!r}")
    return BPD_VARIANT_PREFIX + name
