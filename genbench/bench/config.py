"""The evaluation protocol of a benchmark run (the ``evaluation:`` section of the YAML configs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SAMPLE_METRICS = ("fid", "kid", "prc", "domain")
EVAL_SPLITS = ("test", "train", "val")  # val: for tuning (benchmarks/ablations.py); records report test


@dataclass
class EvalConfig:
    """How a trained model is scored. Every field is recorded with the result.

    Args:
        num_samples: generated images scored by FID/KID/precision-recall (FID is biased by n: rows are
            only compared at equal n); 0 skips sample metrics.
        reference_split: real images the samples are compared with (``test``, ``train``, or ``val`` for
            tuning: choices are made on the validation split, never on the reported test metric); the same n.
        sample_batch_size: images generated per ``model.sample`` call.
        sample_metrics: any of ``fid``, ``kid``, ``prc`` (precision/recall) and ``domain`` (Fréchet distance
            and class coverage in a small classifier's features, :mod:`genbench.metrics.domain`; labelled
            as such, never FID).
        kid_subset_size: KID subset size; ``None`` (default) = ``min(1000, n // 2)``: the usual 1000 where
            n >= 2000, and below that half the set, so that the 100 subsets differ and the reported std
            means something (with a subset of all n images every subset is the same set).
        prc_neighborhood: k of the k-NN manifolds of precision/recall.
        feature_batch_size: images per Inception forward pass (FID, KID, precision/recall, the floor). FID does not depend
            on it beyond float rounding (tests/test_evaluate.py checks two sizes agree); it only trades
            memory for speed, and is recorded so that a rerun can use the same one.
        likelihood_subset: the first n test images scored for bits/dim; ``None`` = the whole test split. The
            mean is reported with its standard error over those n images. Set once per profile in
            ``configs/profile/<profile>/evaluation.yaml`` so that every family is scored on the same images.
        likelihood_split: the split those images come from: ``test`` (reported), or ``val`` for tuning.
        likelihood_batch_size: images per ``model.log_likelihood`` call.
        memorization_samples: samples compared with the training set by nearest-neighbour distance
            (0 skips the check).
        seed: seed of sample generation (rank r draws with seed + r).
        sampler_steps_sweep: FID at ``num_samples`` for each of these sampler step counts (iterative samplers
            only, e.g. DDPM); recorded as ``fid_vs_steps`` and plotted on the leaderboard.
        curve_points: points of the quality-vs-compute curve taken during training (0 = none), spaced on a log
            scale of images seen from ``curve_first_point`` x ``budget.train_images`` to the whole budget.
        curve_first_point: the first curve point as a fraction of the budget.
        curve_samples: samples scored at each curve point by the domain metric (and FID with ``curve_fid``).
        curve_likelihood_images: test images (the first ones) scored for bits/dim at each curve point.
        curve_fid: also compute Inception FID at each curve point (minutes per point on a CPU).
        conditional_metrics: class-conditional models only: score what conditioning promises (``bpd_conditional``
            and ``label_information``, the accuracy and per-class FD, the guidance sweep); off in the training
            curve's reduced protocol.
        conditional_samples_per_class: class-conditional models only: samples drawn for each class (labels
            given, seed ``seed``) and scored by the domain classifier: conditional accuracy, per-class
            Fréchet distance; 0 skips these (:mod:`genbench.bench.suites.conditional`).
        guidance_scales: models with classifier-free guidance only: FID, domain FD and conditional accuracy
            of ``guidance_num_samples`` class-balanced samples at each of these guidance weights
            (``guidance_sweep``, plotted as the fidelity-against-class-agreement trade-off).
        guidance_num_samples: samples per guidance weight (a multiple of the number of classes is balanced).
    """

    num_samples: int = 1000
    reference_split: str = "test"
    sample_batch_size: int = 250
    sample_metrics: list[str] = field(default_factory=lambda: list(SAMPLE_METRICS))
    kid_subset_size: int | None = None
    prc_neighborhood: int = 3
    feature_batch_size: int = 64
    likelihood_subset: int | None = None
    likelihood_split: str = "test"
    likelihood_batch_size: int = 500
    memorization_samples: int = 500
    seed: int = 0
    sampler_steps_sweep: list[int] = field(default_factory=list)
    curve_points: int = 5
    curve_first_point: float = 0.01
    curve_samples: int = 256
    curve_likelihood_images: int = 256
    curve_fid: bool = False
    conditional_metrics: bool = True
    conditional_samples_per_class: int = 100
    guidance_scales: list[float] = field(default_factory=list)
    guidance_num_samples: int = 250

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ValueError(f"evaluation.num_samples must be >= 0, got {self.num_samples}")
        if self.reference_split not in EVAL_SPLITS:
            raise ValueError(f"evaluation.reference_split must be one of {', '.join(EVAL_SPLITS)}, "
                             f"got {self.reference_split!r}")
        if self.likelihood_split not in ("test", "val"):
            raise ValueError(f"evaluation.likelihood_split must be 'test' or 'val', got {self.likelihood_split!r}")
        bad = [m for m in self.sample_metrics if m not in SAMPLE_METRICS]
        if bad:
            raise ValueError(f"unknown sample metric(s) {bad}; valid: {', '.join(SAMPLE_METRICS)}")
        if self.kid_subset_size is not None and self.kid_subset_size < 2:
            raise ValueError(f"evaluation.kid_subset_size must be >= 2 or null, got {self.kid_subset_size}")
        if self.feature_batch_size < 1:
            raise ValueError(f"evaluation.feature_batch_size must be >= 1, got {self.feature_batch_size}")
        if self.likelihood_subset is not None and self.likelihood_subset <= 0:
            raise ValueError(f"evaluation.likelihood_subset must be positive or null, got {self.likelihood_subset}")

        if self.curve_points < 0 or self.curve_samples < 0:
            raise ValueError("evaluation.curve_points and curve_samples must be >= 0")
        if self.curve_likelihood_images < 1:
            raise ValueError(f"evaluation.curve_likelihood_images must be >= 1, got {self.curve_likelihood_images}")
        if not 0.0 < self.curve_first_point <= 1.0:
            raise ValueError(f"evaluation.curve_first_point must be in (0, 1], got {self.curve_first_point}")
        if self.conditional_samples_per_class < 0 or self.guidance_num_samples < 2:
            raise ValueError("evaluation.conditional_samples_per_class must be >= 0 and guidance_num_samples >= 2, "
                             f"got {self.conditional_samples_per_class} and {self.guidance_num_samples}")
        if any(not float(w) >= 0.0 for w in self.guidance_scales):
            raise ValueError(f"evaluation.guidance_scales must be >= 0 (0 = the unconditional model, 1 = the "
                             f"conditional one), got {self.guidance_scales}")
        if any(int(k) < 1 for k in self.sampler_steps_sweep):
            raise ValueError(f"evaluation.sampler_steps_sweep needs positive step counts, got {self.sampler_steps_sweep}")

    def kid_subset(self, n: int) -> int:
        """The KID subset size for sets of ``n`` images (at most ``n``, at least 2)."""
        size = min(1000, n // 2) if self.kid_subset_size is None else self.kid_subset_size
        return max(2, min(size, n))

    def curve_images(self, budget_images: int) -> list[int]:
        """Images seen at which the curve is taken: log-spaced, distinct, the last = the whole budget."""
        if self.curve_points <= 0 or budget_images <= 0:
            return []
        if self.curve_points == 1:
            return [int(budget_images)]
        ratio = self.curve_first_point ** (1.0 / (self.curve_points - 1))
        points = {max(1, round(budget_images * ratio ** (self.curve_points - 1 - i))) for i in range(self.curve_points)}
        return sorted(points)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
