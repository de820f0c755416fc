"""Training budgets in work, not wall time, and the training compute they buy.

A profile states its budget as training images seen (``budget.train_images``: optimizer batches times the
global batch size), so a benchmark trains the same steps on a busy machine as on an idle one. Wall time
(``trainer.max_time``) is only a safety cap: a run that hits it, or ``trainer.max_steps``, before its budget
is marked ``truncated`` in the record and on the leaderboard.

Compute is counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``: one training batch
(forward, backward and optimizer step of every player: both networks of a GAN) is counted once per
invocation, and training FLOPs = FLOPs per image x images seen. The counter covers matrix multiplies,
convolutions and attention (an FMA = 2 FLOPs); elementwise work (activations, normalisation, the optimizer's
update, EMA) is not counted, so the figures are a lower bound dominated by what dominates the cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from genbench.models.base import eval_mode

FLOP_COUNTER = ("torch.utils.flop_counter.FlopCounterMode: matmul, convolution and attention FLOPs "
                "(FMA = 2); elementwise work not counted")
STOPPED_BY_BUDGET = "budget"


@dataclass
class BudgetConfig:
    """The ``budget:`` section of a profile: how much training a run gets.

    Args:
        train_images: training images seen (batches x global batch size) after which training stops;
            ``None`` = no budget (training stops on ``trainer.max_steps``/``max_epochs``/``max_time``).
    """

    train_images: int | None = None

    def __post_init__(self) -> None:
        if self.train_images is not None and int(self.train_images) <= 0:
            raise ValueError(f"budget.train_images must be a positive number of images or null, got {self.train_images}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_flops(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """``fn(*args, **kwargs)`` under ``FlopCounterMode``: (its result, the FLOPs it ran)."""
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops())


class TrainingBudget(L.Callback):
    """Counts training images and batches, stops training when ``train_images`` are seen, and measures
    the FLOPs of one training batch.

    Its counters are callback state, so a resumed run goes on counting where it stopped and a run resumed
    after its budget was spent trains no further batch.
    """

    def __init__(self, train_images: int | None = None) -> None:
        self.train_images = None if train_images is None else int(train_images)
        self.images = 0
        self.batches = 0
        self.flops_per_image: float | None = None
        self.flops_batch_images: int | None = None
        self._counter: FlopCounterMode | None = None

    @property
    def spent(self) -> bool:
        return self.train_images is not None and self.images >= self.train_images

    @property
    def train_flops(self) -> float | None:
        return None if self.flops_per_image is None else self.flops_per_image * self.images

    def _stop_if_spent(self, trainer: L.Trainer) -> None:
        if self.spent:
            trainer.should_stop = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_spent(trainer)  # a finished run resumed: no further batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.flops_per_image is None and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()  # left in on_train_batch_end: forward, backward and optimizer step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = int(batch[0].shape[0])
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_image = self._counter.get_total_flops() / n  # per image of this rank's batch
            self.flops_batch_images = n
            self._counter = None
        self.images += n * trainer.world_size
        self.batches += 1
        self._stop_if_spent(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None

    def stopped_by(self, trainer: L.Trainer) -> str:
        """What ended training: ``budget``, ``max_steps``, ``max_epochs`` or ``max_time``."""
        if self.spent:
            return STOPPED_BY_BUDGET
        if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
            return "max_steps"
        if trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs:
            return "max_epochs"
        from lightning.pytorch.callbacks import Timer

        timers = [cb for cb in trainer.callbacks if isinstance(cb, Timer)]
        if timers and (timers[0].time_remaining("train") or 0.0) <= 0.0:
            return "max_time"
        return "other"

    def summary(self, optimizer_steps: int, stopped_by: str) -> dict[str, Any]:
        """The record's ``compute.training`` entry (``stopped_by`` as :meth:`stopped_by` says)."""
        total = self.train_flops
        return {
            "budget_train_images": self.train_images,
            "images_seen": self.images,
            "batches": self.batches,
            "optimizer_steps": int(optimizer_steps),
            "stopped_by": stopped_by,
            "truncated": self.train_images is not None and stopped_by != STOPPED_BY_BUDGET,
            "train_flops_per_image": self.flops_per_image,
            "train_flops_total": total,
            "train_pflop": None if total is None else total / 1e15,
            "flops_measured_on_batch_of": self.flops_batch_images,
            "flop_counter": FLOP_COUNTER,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "batches": self.batches, "flops_per_image": self.flops_per_image,
                "flops_batch_images": self.flops_batch_images}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images = int(state_dict.get("images", 0))
        self.batches = int(state_dict.get("batches", 0))
        self.flops_per_image = state_dict.get("flops_per_image")
        self.flops_batch_images = state_dict.get("flops_batch_images")


def sampling_cost(model: Any, n: int = 4, seed: int = 0) -> dict[str, Any]:
    """FLOPs per generated image of ``model.sample`` (counted on ``n`` images, in eval mode, no grad) and
    the network evaluations per image that the model's sampler declares."""
    with eval_mode(model):
        with torch.no_grad():
            _, flops = count_flops(model.sample, n, generator=torch.Generator(device=model.device).manual_seed(seed))
    return {"flops_per_image": flops / n, "counted_on_images": n,
            "network_evaluations_per_image": model.sampler_info().get("network_evaluations"),
            "flop_counter": FLOP_COUNTER}
