"""The evaluation harness: score any model that keeps the contract of :mod:`genbench.models.base`.

:func:`evaluate` runs the evaluation suites (:mod:`genbench.bench.suites`) that apply to the data kind and
the model's declared capabilities, and returns a JSON-serialisable dict keyed by :mod:`genbench.metrics.table`:

* ``bpd`` (and ``bpd_<name>`` per ``model.likelihood_variants()``): bits/dim of the first
  ``likelihood_subset`` test images (all of them when ``None``), mean with its standard error, beside the
  nats per image they come from (``nll_nats``, ``nll_nats_stderr``; bpd = nll_nats / (D ln 2)); a model
  without a density reports ``{"available": False, "reason": ...}``. Continuous data (toy2d) report
  ``nll_nats`` instead, beside the density's true entropy.
* ``fid``, ``kid``, ``precision``, ``recall``: ``num_samples`` generated images against the first
  ``num_samples`` images of ``reference_split``, TF-FID Inception features (torch-fidelity), with the
  extractor and its weights' sha256; ``inception_score`` only with weights that carry the classifier head;
  ``fid_floor``: real-vs-real FID (and KID with its std) at the same n (a train subset vs the reference
  images; when the reference split is ``train`` the subset is the disjoint ``train[n:2n]``). Features are
  extracted ``feature_batch_size`` images at a time (recorded with each entry).
* ``domain_fd``, ``domain_fd_floor``, ``class_coverage`` (labelled domain metric, never FID): the same
  samples and reference images in the features of a small classifier trained on the dataset
  (:mod:`genbench.metrics.domain`): Fréchet distance, its real-vs-real floor, and the total-variation
  distance between predicted-class histograms with the number of classes covered.
* ``memorization``: nearest-training-image L2 distances of samples against those of as many test images.
* ``sampling``: images/s of ``model.sample`` with the sampler's own description.
* ``fid_vs_steps``: FID per sampler step count (models declaring adjustable sampler steps; a sweep configured
  for another model is rejected before any work).

Sample protocol (seeded, rank-aware): ``n = max(num_samples, memorization_samples)`` samples are drawn in
batches of ``sample_batch_size``. With ``W`` ranks, rank ``r`` draws a contiguous share (the first
``n % W`` ranks one more) from a ``torch.Generator`` on the model's device seeded ``seed + r``, used
sequentially over its batches; the shares are concatenated in rank order. One rank therefore reproduces
the ``seed`` stream exactly; a different world size or batch size draws a different (equally valid) set.
Likelihoods: rank ``r`` scores the chunks ``r, r + W, ...`` of the subset (no padded duplicates), gathered
exactly once. Features and metrics are computed on rank 0 and the dict is broadcast to every rank.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from genbench.bench import suites
from genbench.bench.config import EvalConfig
from genbench.bench.suites.context import EvalContext, Ranks
from genbench.metrics import fidelity


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(
    model: Any,
    datamodule: Any,
    cfg: EvalConfig,
    trainer: Any | None = None,
    progress: bool = True,
    *,
    feature_extractor: fidelity.FeatureExtractor | None = None,
    inception_weights: str | None = None,
    cache_dir: str | None = None,
    extraction_figure: str | Path | None = None,
) -> dict[str, Any]:
    """Score ``model`` on ``datamodule`` with protocol ``cfg`` (see the module docstring).

    Args:
        model: a :class:`genbench.models.base.GenerativeModel` (only its contract is used).
        datamodule: the :class:`genbench.data.datamodule.GenDataModule` the model was trained on.
        cfg: the evaluation protocol.
        trainer: a Lightning trainer; with ``world_size > 1`` sampling and likelihoods are split over ranks.
        progress: show tqdm progress bars (on rank 0).
        feature_extractor: replaces the Inception extractor (tests; a labelled domain metric).
        inception_weights: explicit Inception weights path (first in the provider order).
        cache_dir: directory of the reference-feature cache (default ``$GENBENCH_CACHE/fidelity``).
        extraction_figure: where the extraction suite saves its figure (the lowest-ratio samples above their
            nearest training images); ``None`` = no figure.
    """
    if tuple(model.data_shape) != tuple(datamodule.data_shape) or model.num_levels != datamodule.num_levels:
        raise ValueError(
            f"model data_shape/num_levels {tuple(model.data_shape)}/{model.num_levels} do not match the "
            f"datamodule's {tuple(datamodule.data_shape)}/{datamodule.num_levels}")
    selected = suites.select(model, cfg)  # a suite the model cannot run fails here, before any work
    ranks = Ranks(trainer)
    ctx = EvalContext(model=model, datamodule=datamodule, cfg=cfg, ranks=ranks, progress=progress,
                      feature_extractor=feature_extractor, inception_weights=inception_weights, cache_dir=cache_dir,
                      extraction_figure=None if extraction_figure is None else Path(extraction_figure))
    ctx.num_samples_to_draw = max([cfg.num_samples, *(s.samples_needed(cfg) for s, runnable in selected if runnable)])
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {}
    try:
        for suite, runnable in selected:
            if not runnable:
                result.update(suite.unavailable(ctx))
            elif suite.per_rank or (ranks.is_zero and ctx.samples is not None):
                result.update(suite.run(ctx))
    finally:
        model.train(was_training)
    result = ranks.broadcast(result if ranks.is_zero else None)
    return _finite_or_none(result)


def check_protocol(model: Any, cfg: EvalConfig) -> None:
    """Raise :class:`~genbench.bench.suites.SuiteConfigError` when ``cfg`` asks ``model`` for a suite it cannot
    run (e.g. a sampler sweep for a one-step sampler): the bench calls it before training."""
    suites.select(model, cfg)


def _finite_or_none(obj: Any) -> Any:
    """Make the result strict JSON: non-finite floats become ``None`` (their counts are recorded)."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
