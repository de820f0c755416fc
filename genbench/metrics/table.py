"""The metric table: one declaration per metric the evaluation harness can emit.

Each :class:`Metric` gives a metric's record key, unit, direction, digits and label, which data kinds and
model capabilities it needs, and where it is rendered (leaderboard column, console summary, quality curve).
The record (keys of :func:`genbench.bench.evaluate.evaluate`'s result), the leaderboard, W&B and the
console summary all render from this table; the module constants (``BPD``, ``FID``...) are the keys, for
code that reads one metric by name. Adding a metric is one :func:`_declare` call here and one suite that
emits it (:mod:`genbench.bench.suites`).
"""

from __future__ import annotations

from dataclasses import dataclass

from genbench.capabilities import (
    CLASS_CONDITIONAL,
    DATA_KINDS,
    GUIDANCE,
    IMAGES,
    LIKELIHOOD,
    POINTS,
    SAMPLER_STEPS,
)


@dataclass(frozen=True)
class Metric:
    """One metric of the harness.

    ``lower_is_better`` is None for a structured entry that has no single value to rank (sampling speed,
    memorization report, a sweep). ``data_kinds``/``capabilities``: what the metric needs to be computed
    (a model lacking the capability records ``{"available": False}`` where the harness reports it at all).
    ``leaderboard``/``summary``: a column of the leaderboard / a field of the console summary line;
    ``conditional``: a column of the leaderboard's class-conditional section;
    ``curve_key``: the metric's key in the quality-vs-compute curve points (None: not on the curve);
    ``curve_label``: its panel title in the curve figures (None: logged, not plotted).
    """

    key: str
    unit: str
    label: str
    lower_is_better: bool | None = None
    digits: int = 3
    data_kinds: tuple[str, ...] = DATA_KINDS
    capabilities: tuple[str, ...] = ()
    leaderboard: bool = False
    summary: bool = False
    curve_key: str | None = None
    curve_label: str | None = None
    is_prefix: bool = False  # ``key`` is a family prefix: ``<key><name>`` (e.g. ``bpd_elbo``)
    conditional: bool = False

    def fmt(self, value: float) -> str:
        return f"{value:.{self.digits}f}"


METRICS: dict[str, Metric] = {}


def _declare(metric: Metric) -> str:
    if metric.key in METRICS:
        raise ValueError(f"metric {metric.key!r} declared twice")
    METRICS[metric.key] = metric
    return metric.key


BPD = _declare(Metric(
    "bpd", "bits/dim", "bits/dim", lower_is_better=True, digits=3, data_kinds=(IMAGES,), capabilities=(LIKELIHOOD,),
    leaderboard=True, summary=True, curve_key="bpd", curve_label="bits/dim (test subset)"))
BPD_VARIANT_PREFIX = _declare(Metric(
    "bpd_", "bits/dim", "bits/dim (variant)", lower_is_better=True, digits=3, data_kinds=(IMAGES,),
    capabilities=(LIKELIHOOD,), is_prefix=True))
NLL_NATS = _declare(Metric(
    "nll_nats", "nats per example", "NLL (nats)", lower_is_better=True, digits=3, data_kinds=(POINTS,),
    capabilities=(LIKELIHOOD,), curve_key="nll_nats"))
NLL_NATS_VARIANT_PREFIX = _declare(Metric(
    "nll_nats_", "nats per example", "NLL (nats, variant)", lower_is_better=True, digits=3, data_kinds=(POINTS,),
    capabilities=(LIKELIHOOD,), is_prefix=True))
FID = _declare(Metric(
    "fid", "", "FID", lower_is_better=True, digits=1, data_kinds=(IMAGES,), leaderboard=True, summary=True,
    curve_key="fid", curve_label="FID"))
KID = _declare(Metric("kid", "", "KID", lower_is_better=True, digits=4, data_kinds=(IMAGES,), leaderboard=True,
                      summary=True))
PRECISION = _declare(Metric("precision", "fraction", "precision", lower_is_better=False, digits=3,
                            data_kinds=(IMAGES,), leaderboard=True, summary=True))
RECALL = _declare(Metric("recall", "fraction", "recall", lower_is_better=False, digits=3, data_kinds=(IMAGES,),
                         leaderboard=True, summary=True))
INCEPTION_SCORE = _declare(Metric("inception_score", "", "Inception Score", lower_is_better=False, digits=2,
                                  data_kinds=(IMAGES,)))
FID_FLOOR = _declare(Metric(  # real-vs-real FID at the same n (train subset vs the reference split)
    "fid_floor", "", "FID real vs real", lower_is_better=True, digits=1, data_kinds=(IMAGES,)))
DOMAIN_FD = _declare(Metric(  # Fréchet distance in a small domain classifier's features (labelled; never FID)
    "domain_fd", "", "FD classifier†", lower_is_better=True, digits=1, data_kinds=(IMAGES,), leaderboard=True,
    curve_key="domain_fd", curve_label="FD classifier†"))
DOMAIN_FD_FLOOR = _declare(Metric("domain_fd_floor", "", "FD classifier† real vs real", lower_is_better=True,
                                  digits=1, data_kinds=(IMAGES,)))
CLASS_COVERAGE = _declare(Metric(  # predicted-class histogram of samples vs real images (TV distance)
    "class_coverage", "total variation", "class TV†", lower_is_better=True, digits=3, data_kinds=(IMAGES,),
    leaderboard=True, curve_key="class_tv", curve_label="class TV†"))
MODE_COVERAGE = _declare(Metric(  # toy2d mixtures: modes recovered and the share of high-quality samples
    "mode_coverage", "modes", "modes recovered", data_kinds=(POINTS,)))
EXTRACTION_RATE = _declare(Metric(  # share of samples flagged as copies of a training image (genbench.metrics.extraction)
    "extraction_rate", "share of samples", "extraction rate", lower_is_better=True, digits=3, data_kinds=(IMAGES,),
    leaderboard=True))
MEMORIZATION = _declare(Metric("memorization", "pixel-space L2", "nearest-train distance", data_kinds=(IMAGES,)))
FID_VARIANT_PREFIX = _declare(Metric(  # FID of another sampler of the same weights (model.sample_variants)
    "fid_", "", "FID (sample variant)", lower_is_better=True, digits=1, data_kinds=(IMAGES,), is_prefix=True))
SAMPLING = _declare(Metric("sampling", "images/s", "sample img/s", digits=1))
FID_VS_STEPS = _declare(Metric(  # [{"steps", "fid", "n"}] for iterative samplers
    "fid_vs_steps", "", "FID against sampler steps", data_kinds=(IMAGES,), capabilities=(SAMPLER_STEPS,)))

# class-conditional models (genbench.bench.suites.conditional)
BPD_CONDITIONAL = _declare(Metric(  # -log2 p(x | y) / D of the bits/dim test images, with their own labels
    "bpd_conditional", "bits/dim", "bits/dim | y", lower_is_better=True, digits=3, data_kinds=(IMAGES,),
    capabilities=(LIKELIHOOD, CLASS_CONDITIONAL), conditional=True))
LABEL_INFORMATION = _declare(Metric(  # bpd - bpd_conditional per image: at most log2(K) / D for an exact marginal
    "label_information", "bits/dim", "bits/dim the label saves", digits=4, data_kinds=(IMAGES,),
    capabilities=(LIKELIHOOD, CLASS_CONDITIONAL), conditional=True))
CONDITIONAL_ACCURACY = _declare(Metric(  # the domain classifier's agreement with the requested class
    "conditional_accuracy", "fraction", "accuracy†", lower_is_better=False, digits=3, data_kinds=(IMAGES,),
    capabilities=(CLASS_CONDITIONAL,), conditional=True))
CLASS_FD = _declare(Metric(  # mean over classes of the domain FD between class-c samples and class-c test images
    "class_fd", "", "per-class FD†", lower_is_better=True, digits=1, data_kinds=(IMAGES,),
    capabilities=(CLASS_CONDITIONAL,), conditional=True))
GUIDANCE_SWEEP = _declare(Metric(  # [{"scale", "fid", "domain_fd", "accuracy", "n"}]
    "guidance_sweep", "", "FID and accuracy against guidance weight", data_kinds=(IMAGES,), capabilities=(GUIDANCE,)))


def variant(prefix: str, name: str) -> str:
    """Metric key of a likelihood variant, e.g. ``bpd_elbo``."""
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"likelihood variant names must be alphanumeric/underscore, got {name!r}")
    return prefix + name


def bpd_variant(name: str) -> str:
    """Metric key of a bits/dim likelihood variant, e.g. ``bpd_elbo``."""
    return variant(BPD_VARIANT_PREFIX, name)


def fid_variant(name: str) -> str:
    """Metric key of a sample variant's FID, e.g. ``fid_decoder_modes``."""
    key = variant(FID_VARIANT_PREFIX, name)
    if key in METRICS:
        raise ValueError(f"sample variant name {name!r} collides with the metric {key!r}")
    return key


def lookup(key: str) -> Metric:
    """The declaration of a record key (a variant key resolves to its prefix); KeyError if undeclared."""
    if key in METRICS and not METRICS[key].is_prefix:
        return METRICS[key]
    prefixes = [m for m in METRICS.values() if m.is_prefix and key.startswith(m.key)]
    if not prefixes:
        raise KeyError(f"metric {key!r} is not declared in genbench.metrics.table")
    return max(prefixes, key=lambda m: len(m.key))


def leaderboard_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if m.leaderboard]


def conditional_metrics() -> list[Metric]:
    """Columns of the leaderboard's class-conditional section (beside bits/dim, FID and class TV)."""
    return [m for m in METRICS.values() if m.conditional]


def summary_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if m.summary]


def curve_metrics() -> list[Metric]:
    return [m for m in METRICS.values() if m.curve_key]


def plotted_curve_keys() -> list[str]:
    """Curve-point keys drawn in the quality-vs-compute figures (leaderboard, W&B)."""
    return [m.curve_key for m in curve_metrics() if m.curve_label]
