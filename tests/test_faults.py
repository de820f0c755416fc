"""Numerical faults: a NaN loss stops training, names the step, and the last good checkpoint survives."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from genbench.bench.callbacks import FiniteLossGuard, NonFiniteLossError


class Blows(L.LightningModule):
    """A tiny regression whose loss turns NaN at a chosen step (the injected fault)."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.nan_at = nan_at

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = self.lin(x).pow(2).mean()
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _guarded_trainer(ckpt_dir):
    """A trainer with the guard and a checkpoint after every step, and a tiny loader."""
    loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=50, logger=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[FiniteLossGuard(ckpt_dir),
                                   ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                                   every_n_train_steps=1)])
    return trainer, loader


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    trainer, loader = _guarded_trainer(ckpt_dir)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 5") as err:
        trainer.fit(Blows(nan_at=5), loader)
    assert "last good checkpoint" in str(err.value)
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert state["global_step"] == 5  # written after the five good steps 0-4, before the faulty one
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert math.isfinite(float(state["state_dict"]["lin.weight"].sum()))


class Overflows(Blows):
    """The loss stays finite, but at a chosen step the gradients overflow and the update makes the weights inf."""

    def __init__(self, overflow_at: int) -> None:
        super().__init__(nan_at=-1)  # the loss itself never turns NaN by injection
        self.overflow_at = overflow_at

    def on_before_optimizer_step(self, optimizer):
        if self.global_step == self.overflow_at:
            self.lin.weight.grad.fill_(float("inf"))


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    trainer, loader = _guarded_trainer(ckpt_dir)
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights after step 4 .* in lin.weight") as err:
        trainer.fit(Overflows(overflow_at=3), loader)
    assert "the checkpoint was not written" in str(err.value) and "last good checkpoint" in str(err.value)
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3  # the good state after steps 0-2; the overflowing update is not on disk
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
