"""What every evaluation suite shares: the ranks, the protocol, the drawn samples and one cache of real-image
Inception features (so the sample-quality and sampler-sweep suites extract each real image once)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genbench.bench.config import EvalConfig
from genbench.capabilities import data_kind
from genbench.metrics import fidelity


# ---------------------------------------------------------------------------------------------- ranks
class Ranks:
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
def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def check_samples(x: Any, n: int, model: Any) -> torch.Tensor:
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


def draw_samples(model: Any, cfg: EvalConfig, n_total: int, ranks: Ranks, progress: bool,
                 labels: torch.Tensor | None = None, desc: str = "sampling") -> tuple[torch.Tensor, dict[str, Any]]:
    """``n_total`` samples over the ranks (the protocol in :mod:`genbench.bench.evaluate`); with ``labels``
    (int64 ``[n_total]``, class-conditional models) sample i is drawn for class ``labels[i]``, each rank
    drawing the labels of its own contiguous share."""
    shares = ranks.shares(n_total)
    local_n = shares[ranks.rank]
    first = sum(shares[: ranks.rank])
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed + ranks.rank)
    batches = []
    start = time.perf_counter()
    with tqdm(total=local_n, desc=desc, unit="img", disable=not (progress and ranks.is_zero)) as bar:
        done = 0
        while done < local_n:
            b = min(cfg.sample_batch_size, local_n - done)
            if labels is None:
                x = model.sample(b, generator=generator)
            else:
                x = model.sample(b, generator=generator, labels=labels[first + done: first + done + b])
            batches.append(check_samples(x, b, model))
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


def floor_subset(datamodule: Any, cfg: EvalConfig, n: int) -> tuple[int, torch.Tensor]:
    """The real-vs-real floor's images and their start: ``n`` training images disjoint from the reference
    images (``train[n:2n]`` when the reference split is ``train``, else ``train[:n]``)."""
    start = n if cfg.reference_split == "train" else 0
    return start, datamodule.split("train")[0][start: start + n]


# ---------------------------------------------------------------------------------------------- context
@dataclass
class EvalContext:
    """One evaluation: the model, its data and protocol, and what the suites share."""

    model: Any
    datamodule: Any
    cfg: EvalConfig
    ranks: Ranks
    progress: bool = True
    feature_extractor: Any | None = None  # replaces the Inception extractor (tests; a labelled domain metric)
    inception_weights: str | None = None
    cache_dir: str | None = None
    extraction_figure: Path | None = None  # where the extraction suite saves its flagged-sample figure
    samples: torch.Tensor | None = None  # drawn by the sampling suite (rank 0 holds all of them)
    num_samples_to_draw: int = 0  # the most samples any selected suite needs
    # per-image log-likelihoods (nats, gathered in test order) by metric key, for suites that pair with them
    log_likelihoods: dict[str, torch.Tensor] = field(default_factory=dict)
    _domain: Any | None = field(default=None, repr=False)
    _extractor: Any | None = field(default=None, repr=False)
    _real: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def data_kind(self) -> str:
        return data_kind(self.model.is_continuous)

    def extractor(self) -> Any:
        """The Inception extractor (built once, on first use: a requested metric that cannot get its weights
        is an error, never a record without it)."""
        if self._extractor is None:
            self._extractor = self.feature_extractor or fidelity.InceptionExtractor(self.inception_weights,
                                                                                    device=self.model.device)
        return self._extractor

    def domain_extractor(self) -> Any:
        """The dataset's domain classifier (:class:`genbench.metrics.domain.DomainExtractor`), built once."""
        if self._domain is None:
            from genbench.metrics.domain import DomainExtractor

            cache = None if self.cache_dir is None else str(Path(self.cache_dir) / "domain")
            self._domain = DomainExtractor(self.datamodule, cache_dir=cache)
        return self._domain

    def real_features(self, split: str, start: int, images: torch.Tensor) -> torch.Tensor:
        """Inception features of ``split[start:start + len(images)]``, extracted once per evaluation (and
        cached on disk across evaluations by :func:`genbench.metrics.fidelity.reference_features`)."""
        key = (split, start, len(images))
        if key not in self._real:
            self._real[key], _ = fidelity.reference_features(
                images, dataset=self.datamodule.dataset, split=split, start=start, extractor=self.extractor(),
                num_levels=self.model.num_levels, batch_size=self.cfg.feature_batch_size, cache_dir=self.cache_dir,
                progress=self.progress)
        return self._real[key]

    def reference_features(self, n: int) -> tuple[torch.Tensor, int]:
        """Features of the first ``n`` images of the reference split, and how many there were."""
        ref = self.datamodule.split(self.cfg.reference_split)[0][:n]
        return self.real_features(self.cfg.reference_split, 0, ref), len(ref)
