"""A training loader that a checkpoint can put back exactly where it stopped, mid-epoch included.

Lightning restores model, optimizer and loop counters from a checkpoint, but a plain shuffled DataLoader
restarts its epoch with a new random order: after a crash the resumed run sees different batches than an
uninterrupted one would have. Here the order of epoch ``e`` is a function of ``(seed, e)`` alone
(:class:`torch.utils.data.DistributedSampler`'s seeded permutation, sharded over ranks), and the loader
counts the batches it has handed out. The loader has ``state_dict``/``load_state_dict``, which Lightning
stores in the checkpoint's fit-loop state and loads before the first batch, so a resumed run continues
with the very batch an uninterrupted run would have used next.

The sampler subclasses ``DistributedSampler``, so Lightning's DDP keeps it instead of substituting its own,
and every iterator gets its base seed from the loader's own generator, never from the global RNG that
the training step draws from.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffle over this rank's share of the data that can start part-way into an epoch.

    Args:
        dataset: the training dataset (only its length is used).
        num_replicas: number of ranks (1 without DDP).
        rank: this process's global rank.
        seed: the shuffle seed; epoch ``e`` uses the permutation of ``seed + e``.
        drop_last: drop the tail so that every rank gets the same number of examples.

    A dataset with ``epoch_aware = True`` receives ``(index, epoch)`` keys instead of indices, so that its
    random augmentation can be a function of the example and the epoch (see ``FlipDataset``).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.start = 0  # examples of this rank's share of the current epoch already consumed

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0  # a new epoch starts from its beginning
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0  # the offset applies to one pass only
        if getattr(self.dataset, "epoch_aware", False):
            # random augmentation keyed by (example, epoch): the same in any process, replayed on resume
            return iter([(i, self.epoch) for i in indices[start:]])
        return iter(indices[start:])


class PositionedLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` that knows its place in the current epoch.

    ``position`` is ``(epoch, batches handed out in that epoch)``; :meth:`seek` makes the next pass start
    right after a given position. Lightning does not prefetch from loaders of known length, so the count is
    exactly the number of batches the training loop has received.

    Args:
        dataset, sampler: the data and its :class:`ResumableSampler`.
        generator_seed: seed of the loader's own generator (worker base seeds).
        epoch_length: returns the number of batches an epoch really has (e.g. the trainer's
            ``num_training_batches`` under ``limit_train_batches``); default ``len(loader)``.
        **kwargs: passed to ``DataLoader`` (``batch_size``, ``drop_last``, ``num_workers``...).
    """

    sampler: ResumableSampler

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, generator_seed: int = 0,
                 epoch_length: Callable[[], int | float] | None = None, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(f"PositionedLoader needs a ResumableSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, generator=torch.Generator().manual_seed(generator_seed), **kwargs)
        self.batches_served = 0
        self.epoch_length = epoch_length

    @property
    def position(self) -> tuple[int, int]:
        return int(self.sampler.epoch), int(self.batches_served)

    def seek(self, epoch: int, batches: int) -> None:
        """Start the next pass at batch ``batches`` of epoch ``epoch``."""
        if batches < 0 or batches > len(self):
            raise ValueError(f"cannot resume at batch {batches} of an epoch of {len(self)} batches")
        self.sampler.set_epoch(epoch)
        self.sampler.start = batches * int(self.batch_size or 1)
        self.batches_served = batches

    def __iter__(self) -> Iterator[Any]:
        self.batches_served = self.sampler.start // int(self.batch_size or 1)
        for batch in super().__iter__():
            self.batches_served += 1
            yield batch

    # ------------------------------------------------------------ Lightning's stateful-loader interface
    def _signature(self) -> dict[str, int]:
        return {"world_size": int(self.sampler.num_replicas), "batch_size": int(self.batch_size or 1),
                "seed": int(self.sampler.seed), "num_examples": len(self.dataset)}

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self.position
        length = self.epoch_length() if self.epoch_length is not None else len(self)
        if batches >= min(len(self), length):
            epoch, batches = epoch + 1, 0  # the epoch is complete: resume at the start of the next one
        return {"epoch": epoch, "batches": batches, **self._signature()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        recorded = {k: state_dict.get(k) for k in self._signature()}
        if recorded == self._signature():
            self.seek(int(state_dict["epoch"]), int(state_dict["batches"]))
            return
        warnings.warn(
            f"the checkpoint's training position (epoch {state_dict.get('epoch')}, batch {state_dict.get('batches')}) "
            f"was recorded with {recorded}; this run has {self._signature()}: the data order cannot be continued, "
            "so training restarts that epoch from its beginning", stacklevel=2)
        self.seek(int(state_dict.get("epoch", 0)), 0)
