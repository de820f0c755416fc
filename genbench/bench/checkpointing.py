"""Checkpoint files of bench runs: written atomically beside their destination, at a chosen cadence.

Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temp
directory; where that is another filesystem, the final move is a copy, and a crash during it leaves a
truncated ``last.ckpt``. :class:`AtomicCheckpointIO` writes a temporary file in the checkpoint's own
directory, fsyncs it and renames it over the old one, so ``last.ckpt`` is always either the previous
complete checkpoint or the new complete one, whenever the process dies.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from genbench.io import atomic_torch_save

UNITS = {"s": "seconds", "m": "minutes", "h": "hours"}


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with a same-directory temporary file, fsync and ``os.replace`` for local paths."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: Lightning's own
        atomic_torch_save(checkpoint, path)


class PeriodicCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``train_time_interval`` also fires for manual-optimization modules (the GAN).

    Lightning's callback checks only ``every_n_train_steps`` when a module optimizes manually, so a time
    cadence never saved a GAN mid-run and a killed GAN bench restarted from scratch. This applies the same
    rank-0-broadcast time check as Lightning's automatic-optimization path, then saves ``last.ckpt``.
    """

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.automatic_optimization or self._train_time_interval is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._should_skip_saving_checkpoint(trainer):
            return
        now = time.monotonic()
        due = self._last_time_checked is not None and \
            now - self._last_time_checked >= self._train_time_interval.total_seconds()
        if not trainer.strategy.broadcast(due):  # rank 0 decides, so that every rank saves together
            return
        self._last_time_checked = now
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


def parse_checkpoint_every(text: str) -> dict[str, Any]:
    """``"500"`` -> every 500 training steps; ``"90s"``, ``"5m"``, ``"1h"`` -> by wall-clock training time.

    Returns the matching ``ModelCheckpoint`` keyword argument.
    """
    m = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", str(text))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"--checkpoint-every {text!r}: give a positive number of steps (e.g. 500) or a time "
                         "such as 90s, 5m or 1h")
    n, unit = int(m.group(1)), m.group(2)
    if not unit:
        return {"every_n_train_steps": n}
    return {"train_time_interval": timedelta(**{UNITS[unit]: n})}
