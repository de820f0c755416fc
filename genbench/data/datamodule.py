"""One LightningDataModule for every model and every dataset.

A batch is always ``(x, y)``: uint8 images ``[N, C, H, W]`` (float32 points ``[N, 2]`` for the toy2d
densities) and int64 labels. Models map pixels to their own space with :mod:`genbench.data.transforms`.
The validation split is carved from the official train split with a seeded permutation; the test split is
the official one (MNIST: 60k train+val / 10k test).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from genbench.data import external, sources
from genbench.data.resume import PositionedLoader, ResumableSampler
from genbench.data.toy2d import TOY2D, make_toy2d

TOY_TRAIN_SIZE = 50_000
TOY_TEST_SIZE = 10_000
TOY_TRAIN_SEED = 0
TOY_TEST_SEED = 1


def dataset_names() -> list[str]:
    return sorted(sources.IMAGE_DATASETS) + sorted(TOY2D)


def dataset_spec(name: str) -> sources.DatasetSpec:
    """The spec of a dataset name, or of your own data (``folder:PATH``, ``hf:ID[:COLUMN]``: loaded and
    inferred once per process; the spec's ``name`` is then a file-name-safe name with a content hash)."""
    if external.is_external(name):
        return external.load_external(name).spec
    if name in sources.IMAGE_DATASETS:
        return sources.IMAGE_DATASETS[name]
    if name in TOY2D:
        return sources.DatasetSpec(name, "points", (2,), 0, TOY2D[name].num_classes)
    raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(dataset_names())}, or your own images as "
                     "folder:PATH or hf:DATASET_ID[:IMAGE_COLUMN]")


class FlipDataset(torch.utils.data.Dataset):
    """Random horizontal flips of uint8 images (training augmentation; recorded as such).

    Whether example ``i`` is flipped in epoch ``e`` is a function of ``(seed, e, i)`` alone: the
    :class:`~genbench.data.resume.ResumableSampler` hands out ``(i, e)`` keys to datasets that set
    ``epoch_aware``. The flips are therefore the same in worker processes and in the main process, and a
    run resumed mid-epoch replays them exactly.
    """

    epoch_aware = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> None:
        self.x, self.y, self.seed = x, y, int(seed)

    def __len__(self) -> int:
        return len(self.x)

    def flipped(self, i: int, epoch: int) -> bool:
        key = (self.seed * 1_000_003 + epoch) * 10_000_019 + i
        return bool(torch.rand((), generator=torch.Generator().manual_seed(key & (2**63 - 1))) < 0.5)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        img = self.x[i]
        if self.flipped(int(i), int(epoch)):
            img = img.flip(-1)
        return img, self.y[i]


class GenDataModule(L.LightningDataModule):
    """Shared datamodule.

    Args:
        dataset: one of :func:`dataset_names` (mnist, fashion_mnist, cifar10, digits, or a toy2d density), or
            your own images: ``folder:PATH`` or ``hf:DATASET_ID_OR_SAVED_PATH[:IMAGE_COLUMN]``
            (:mod:`genbench.data.external`; shape, levels and classes are inferred).
        batch_size: training batch size per device.
        eval_batch_size: batch size of the validation and test loaders.
        val_size: images carved out of the official train split for validation
            (default: a tenth of it, at most 5000).
        split_seed: seed of the train/validation permutation.
        num_workers: DataLoader workers (the data is held in memory; 0 is usually fastest).
        hflip: random horizontal flips during training (changes the likelihood task: it is recorded).
        train_subset: use only the first N training images (after the split), for quick experiments.
        shuffle_seed: seed of the training order (epoch ``e`` is the permutation of ``shuffle_seed + e``);
            default: the run's ``seed_everything`` seed (``PL_GLOBAL_SEED``), else 0.

    Resuming: the position of the training loader (epoch, batches served) is part of the checkpoint, so a run resumed from a mid-epoch checkpoint continues with the very batch an
    uninterrupted run would have used next (see :mod:`genbench.data.resume`).
    """

    def __init__(
        self,
        dataset: str = "mnist",
        batch_size: int = 128,
        eval_batch_size: int = 256,
        val_size: int | None = None,
        split_seed: int = 0,
        num_workers: int = 0,
        hflip: bool = False,
        train_subset: int | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = dataset_spec(dataset)  # raises a clear error on an unknown name
        if batch_size <= 0 or eval_batch_size <= 0:
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if val_size is not None and val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.save_hyperparameters()
        self.data_spec = dataset  # as given; ``dataset`` is the spec's file-name-safe name
        self.dataset = self.spec.name
        self.external = external.load_external(dataset) if external.is_external(dataset) else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.hflip = hflip
        self.train_subset = train_subset
        self.shuffle_seed = shuffle_seed
        self.source: str | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------ metadata linked into the models
    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.spec.shape

    @property
    def num_levels(self) -> int:
        return self.spec.levels

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def is_continuous(self) -> bool:
        return self.spec.kind == "points"

    # ------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        if not self.is_continuous and self.external is None:
            sources.prepare(self.dataset)

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        if self.is_continuous:
            density = make_toy2d(self.dataset)
            tx, ty = density.sample(TOY_TRAIN_SIZE, torch.Generator().manual_seed(TOY_TRAIN_SEED))
            sx, sy = density.sample(TOY_TEST_SIZE, torch.Generator().manual_seed(TOY_TEST_SEED))
            self.source = f"toy2d:{self.dataset}"
        else:
            s = self.external.splits if self.external is not None else sources.load(self.dataset)
            tx, ty, sx, sy = (torch.from_numpy(np.array(a, copy=True)) for a in (s.train_x, s.train_y, s.test_x, s.test_y))
            self.source = s.source
        val_size = min(5000, len(tx) // 10) if self.val_size is None else self.val_size
        if val_size >= len(tx):
            raise ValueError(f"val_size={val_size} leaves no training data ({len(tx)} train examples)")
        self.resolved_val_size = val_size
        perm = torch.randperm(len(tx), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[:val_size], perm[val_size:]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        self._splits = {
            "train": (tx[train_idx], ty[train_idx]),
            "val": (tx[val_idx], ty[val_idx]),
            "test": (sx, sy),
        }

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole ``train``/``val``/``test`` split as tensors (un-augmented)."""
        if not self._splits:
            self.prepare_data()
            self.setup()
        if name not in self._splits:
            raise ValueError(f"unknown split {name!r}; valid: train, val, test")
        return self._splits[name]

    def _dataset(self, name: str) -> torch.utils.data.Dataset:
        x, y = self.split(name)
        if name == "train" and self.hflip:
            return FlipDataset(x, y, seed=self.resolved_shuffle_seed())
        return TensorDataset(x, y)

    def _loader(self, name: str, batch_size: int) -> DataLoader:
        # a loader-owned generator: creating an iterator never draws from the global RNG
        return DataLoader(self._dataset(name), batch_size=batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(0))

    def resolved_shuffle_seed(self) -> int:
        if self.shuffle_seed is not None:
            return int(self.shuffle_seed)
        return int(os.environ.get("PL_GLOBAL_SEED", "0") or 0)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed = self.resolved_shuffle_seed()
        ds = self._dataset("train")
        if len(ds) // world < self.batch_size:
            raise ValueError(f"{len(ds)} training examples over {world} device(s) do not fill one batch of "
                             f"{self.batch_size}; lower data.batch_size or raise data.train_subset")
        sampler = ResumableSampler(ds, num_replicas=world, rank=rank, seed=seed, drop_last=True)
        epoch_length = (lambda: trainer.num_training_batches) if trainer is not None else None
        return PositionedLoader(ds, sampler, generator_seed=seed + rank, epoch_length=epoch_length,
                                batch_size=self.batch_size, drop_last=True, num_workers=self.num_workers,
                                persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    # ------------------------------------------------------------ recorded with every result
    def describe(self) -> dict[str, Any]:
        val_x, _ = self.split("val")
        digest = hashlib.sha256(val_x.numpy().tobytes()).hexdigest()[:16]
        return {
            "dataset": self.dataset,
            "kind": self.spec.kind,
            "shape": list(self.data_shape),
            "levels": self.num_levels,
            "num_classes": self.num_classes,
            "source": self.source,
            "sizes": {k: len(v[0]) for k, v in self._splits.items()},
            "val_split": {"size": self.resolved_val_size, "seed": self.split_seed, "sha256_16": digest},
            "augmentation": "hflip" if self.hflip else "none",
            **({"inferred": self.external.inferred} if self.external is not None else {}),
        }
