"""The public scoring API: ``genbench.evaluate`` scores any generator on any dataset genbench reads.

    import genbench
    record = genbench.evaluate(sample_fn, data="mnist", num_samples=1000, metrics=["fid", "kid", "prc"])
    record["metrics"]["fid"]["value"]

``model_or_sample_fn`` is a :class:`~genbench.models.base.GenerativeModel` (every metric its capabilities
allow), or a plain ``sample_fn(n, generator) -> uint8 [n, C, H, W]`` on the dataset's pixel grid, which is
enough for the sample metrics; ``log_likelihood=fn`` (``uint8 [N, C, H, W] -> float64 [N]`` log-likelihood
in nats per image) adds bits/dim. The protocol is the bench's own (:class:`~genbench.bench.config.EvalConfig`,
:func:`genbench.bench.evaluate.evaluate`), so the numbers compare with the leaderboard's at equal n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import torch

from genbench.bench.config import SAMPLE_METRICS, EvalConfig
from genbench.capabilities import LIKELIHOOD

LIKELIHOOD_METRIC = "bpd"
MEMORIZATION_METRIC = "memorization"
METRICS = (*SAMPLE_METRICS, LIKELIHOOD_METRIC, MEMORIZATION_METRIC)
DEFAULT_METRICS = ("fid", "kid", "prc")

SampleFn = Callable[[int, torch.Generator], torch.Tensor]
LogLikelihoodFn = Callable[[torch.Tensor], torch.Tensor]


class FunctionModel:
    """The model contract the evaluation harness reads, around a sample function (and a log-likelihood).

    ``capabilities`` declares ``likelihood`` only when a log-likelihood function is given (or when bits/dim is
    requested of a GenerativeModel that has one), so the harness chooses its suites from it as for any model.
    """

    def __init__(self, sample_fn: SampleFn, data_shape: Sequence[int], num_levels: int, *,
                 log_likelihood: LogLikelihoodFn | None = None, likelihood_kind: str = "bound",
                 name: str = "sample_fn", family: str = "external", device: str | torch.device = "cpu",
                 describe: dict[str, Any] | None = None, sampler_info: dict[str, Any] | None = None) -> None:
        self._sample_fn = sample_fn
        self._log_likelihood = log_likelihood
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_levels = int(num_levels)
        self.likelihood_kind = likelihood_kind if log_likelihood is not None else "none"
        self.family = family
        self.name = name
        self.device = torch.device(device)
        self.training = False
        self._describe = describe
        self._sampler_info = sampler_info or {"sampler": name}

    # what evaluate() reads ------------------------------------------------------------------
    @property
    def is_continuous(self) -> bool:
        return self.num_levels == 0

    @property
    def num_dims(self) -> int:
        n = 1
        for s in self.data_shape:
            n *= s
        return n

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset({LIKELIHOOD}) if self._log_likelihood is not None else frozenset()

    def eval(self) -> FunctionModel:
        return self

    def train(self, mode: bool = True) -> FunctionModel:
        return self

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._sample_fn(n, generator)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        if self._log_likelihood is None:
            raise NotImplementedError("no log_likelihood function was given")
        return self._log_likelihood(x)

    def likelihood_variants(self) -> dict[str, LogLikelihoodFn]:
        return {}

    def likelihood_variant_info(self, name: str) -> dict[str, Any]:
        return {}

    def likelihood_info(self) -> dict[str, Any]:
        return {"kind": self.likelihood_kind}

    def sampler_info(self) -> dict[str, Any]:
        return dict(self._sampler_info)

    def describe(self) -> dict[str, Any]:
        if self._describe is not None:
            return dict(self._describe)
        return {"family": self.family, "model": self.name, "params": None,
                "likelihood": self.likelihood_info(), "sampler": self.sampler_info()}


def _datamodule(data: Any, data_kwargs: dict[str, Any]) -> Any:
    from genbench.data import GenDataModule

    if isinstance(data, GenDataModule):
        return data
    if not isinstance(data, str):
        raise TypeError(f"data must be a dataset name, folder:PATH, hf:ID[:COLUMN] or a GenDataModule, got {type(data).__name__}")
    dm = GenDataModule(data, **data_kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def _check_metrics(metrics: Sequence[str]) -> list[str]:
    metrics = list(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; valid: {', '.join(METRICS)}")
    if not metrics:
        raise ValueError(f"metrics is empty; name at least one of {', '.join(METRICS)}")
    return metrics


def as_model(model_or_sample_fn: Any, dm: Any, metrics: Sequence[str],
             log_likelihood: LogLikelihoodFn | None = None, device: str | torch.device | None = None) -> Any:
    """What the harness scores: a GenerativeModel (its likelihood hidden unless ``bpd`` is asked for) or a
    :class:`FunctionModel` around a sample function."""
    from genbench.models.base import GenerativeModel

    want_bpd = LIKELIHOOD_METRIC in metrics
    if isinstance(model_or_sample_fn, GenerativeModel):
        model = model_or_sample_fn
        if tuple(model.data_shape) != tuple(dm.data_shape) or model.num_levels != dm.num_levels:
            raise ValueError(f"the model generates {tuple(model.data_shape)} with {model.num_levels} levels, but "
                             f"{dm.dataset} holds {tuple(dm.data_shape)} with {dm.num_levels}: score it on the data it "
                             "was trained on")
        if device is not None:
            model = model.to(device)
        if log_likelihood is not None:
            raise ValueError("log_likelihood= is for a sample function; a GenerativeModel brings its own")
        if want_bpd and LIKELIHOOD not in model.capabilities:
            raise ValueError(f"bits/dim was requested, but {type(model).__name__} declares no likelihood; drop "
                             f"'{LIKELIHOOD_METRIC}' from metrics")
        if want_bpd:
            return model
        return FunctionModel(model.sample, model.data_shape, model.num_levels, device=model.device,
                             name=type(model).__name__, family=model.family, describe=model.describe(),
                             sampler_info=model.sampler_info())
    if not callable(model_or_sample_fn):
        raise TypeError("model_or_sample_fn must be a GenerativeModel or a callable sample_fn(n, generator) -> "
                        f"uint8 [n, C, H, W], got {type(model_or_sample_fn).__name__}")
    if want_bpd and log_likelihood is None:
        raise ValueError(f"'{LIKELIHOOD_METRIC}' needs log_likelihood=fn (uint8 [N, C, H, W] -> float64 [N] nats "
                         "per image) beside the sample function")
    name = getattr(model_or_sample_fn, "__qualname__", None) or type(model_or_sample_fn).__name__
    return FunctionModel(model_or_sample_fn, dm.data_shape, dm.num_levels,
                         log_likelihood=log_likelihood if want_bpd else None, name=name,
                         device=device or "cpu")


def evaluate(
    model_or_sample_fn: Any,
    data: Any = "mnist",
    num_samples: int = 1000,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    log_likelihood: LogLikelihoodFn | None = None,
    seed: int = 0,
    reference_split: str = "test",
    likelihood_subset: int | None = 1000,
    sample_batch_size: int = 250,
    feature_batch_size: int = 64,
    memorization_samples: int = 500,
    device: str | torch.device | None = None,
    progress: bool = False,
    inception_weights: str | None = None,
    cache_dir: str | None = None,
    feature_extractor: Any | None = None,
    data_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a generator on ``data`` and return a record dict.

    Args:
        model_or_sample_fn: a :class:`~genbench.models.base.GenerativeModel`, or ``sample_fn(n, generator)``
            returning uint8 ``[n, C, H, W]`` on the data's grid (values below its number of levels).
        data: a dataset name (``mnist``, ...), ``folder:PATH``, ``hf:ID[:COLUMN]`` or a GenDataModule.
        num_samples: samples scored by the sample metrics, against the first ``num_samples`` images of
            ``reference_split`` (FID is biased by n: compare values at equal n only).
        metrics: any of ``fid``, ``kid``, ``prc`` (precision/recall), ``domain`` (a small classifier's
            features; labelled data), ``bpd`` (bits/dim; needs a likelihood) and ``memorization``.
        log_likelihood: with a sample function, ``fn(uint8 [N, C, H, W]) -> float64 [N]`` log-likelihood in
            nats per image of the discrete data; enables ``bpd`` on the first ``likelihood_subset`` test images.
        seed: the sample generator's seed (``sample_fn`` gets a ``torch.Generator`` seeded with it).
        memorization_samples: samples checked against the training set when ``memorization`` is asked for.
        feature_extractor: replaces the Inception network (tests; a labelled stand-in).

    Returns:
        ``{"metrics": {...}, "evaluation": {...}, "data": {...}, "model_info": {...}, "environment": {...},
        "created": ...}``: the metrics with their protocol, as in a bench result record.
    """
    from genbench.bench.evaluate import evaluate as run_suites
    from genbench.bench.record import environment

    metrics = _check_metrics(metrics)
    dm = _datamodule(data, dict(data_kwargs or {}))
    model = as_model(model_or_sample_fn, dm, metrics, log_likelihood, device)
    cfg = EvalConfig(num_samples=int(num_samples), reference_split=reference_split,
                     sample_batch_size=sample_batch_size, sample_metrics=[m for m in metrics if m in SAMPLE_METRICS],
                     feature_batch_size=feature_batch_size, likelihood_subset=likelihood_subset,
                     memorization_samples=memorization_samples if MEMORIZATION_METRIC in metrics else 0,
                     seed=seed, curve_points=0)
    if not cfg.sample_metrics and cfg.memorization_samples == 0:
        cfg.num_samples = 0  # bits/dim only: draw no samples
    scores = run_suites(model, dm, cfg, progress=progress, feature_extractor=feature_extractor,
                        inception_weights=inception_weights, cache_dir=cache_dir)
    if LIKELIHOOD_METRIC not in metrics:  # the harness records "no density" for every model; not asked for here
        scores = {k: v for k, v in scores.items() if not k.startswith(LIKELIHOOD_METRIC)}
    return {"metrics": scores, "evaluation": cfg.to_dict(), "data": dm.describe(), "model_info": model.describe(),
            "environment": environment(), "created": datetime.now(UTC).isoformat(timespec="seconds")}
