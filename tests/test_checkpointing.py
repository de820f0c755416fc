"""Checkpoint cadence: a time interval saves mid-run for manual-optimization modules too (the GAN)."""

from __future__ import annotations

from datetime import timedelta

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from genbench.bench.checkpointing import PeriodicCheckpoint


class _Module(L.LightningModule):
    """Records, at every training step, the global step stored in ``last.ckpt`` (None while there is none)."""

    def __init__(self, ckpt_dir, manual: bool) -> None:
        super().__init__()
        self.automatic_optimization = not manual
        self.lin = torch.nn.Linear(2, 1)
        self.ckpt_dir, self.seen = ckpt_dir, []

    def training_step(self, batch, batch_idx):
        last = self.ckpt_dir / "last.ckpt"
        self.seen.append(torch.load(last, weights_only=True)["global_step"] if last.is_file() else None)
        loss = self.lin(batch[0]).pow(2).mean()
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("manual", [False, True])
def test_a_time_cadence_saves_during_training_with_either_optimization(tmp_path, manual, one_thread):
    module = _Module(tmp_path, manual)
    ckpt = PeriodicCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, train_time_interval=timedelta(0))
    trainer = L.Trainer(max_steps=4, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=4))
    # with a zero interval every batch is due: each step finds the previous step's checkpoint on disk
    assert module.seen == [None, 1, 2, 3]
