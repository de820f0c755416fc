"""Training budgets in work, not wall time, and the training compute they buy.

A profile states its budget as training images seen (``budget.train_images``: optimizer batches times the
global batch size), so a benchmark trains the same steps on a busy machine as on an idle one. Wall time
(``trainer.max_time``) is only a safety cap: a run that hits it, or ``trainer.max_steps``, before its budget
is marked ``truncated`` in the record and on the leaderboard.

Compute is counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``: one training batch
(forward, backward and optimizer step of every player: both networks of a GAN) is counted once per
invocation, and training FLOPs = FLOPs per image x images seen. A model trained in stages of different cost
(latent diffusion: an autoencoder, then a UNet on its latents) names the stage of each batch in a
``training_stage`` attribute; the FLOPs per image are then measured on the first batch of each stage and
training FLOPs = sum over stages of FLOPs per image x the stage's images. The counter covers matrix multiplies,
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
    the FLOPs of one training batch (of each stage, for a module with a ``training_stage`` attribute).

    Its counters are callback state, so a resumed run goes on counting where it stopped and a run resumed
    after its budget was spent trains no further batch.
    """

    def __init__(self, train_images: int | None = None) -> None:
        self.train_images = None if train_images is None else int(train_images)
        self.images = 0
        self.batches = 0
        self._flops_per_image: float | None = None  # single-stage models
        self.flops_batch_images: int | None = None
        # staged models: stage -> {"images": int, "flops_per_image": float | None}, in the order first seen
        self.stages: dict[str, dict[str, Any]] = {}
        self._counter: FlopCounterMode | None = None
        self._batch_stage: str | None = None

    @property
    def spent(self) -> bool:
        return self.train_images is not None and self.images >= self.train_images

    @property
    def staged(self) -> bool:
        return bool(self.stages)

    @property
    def train_flops(self) -> float | None:
        if self.staged:
            if any(s["flops_per_image"] is None for s in self.stages.values()):
                return None
            return sum(s["flops_per_image"] * s["images"] for s in self.stages.values())
        return None if self._flops_per_image is None else self._flops_per_image * self.images

    @property
    def flops_per_image(self) -> float | None:
        """FLOPs per training image: the measured one, or for a staged model the average over images seen."""
        if self.staged:
            total = self.train_flops
            return None if total is None or self.images == 0 else total / self.images
        return self._flops_per_image

    def _stop_if_spent(self, trainer: L.Trainer) -> None:
        if self.spent:
            trainer.should_stop = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_spent(trainer)  # a finished run resumed: no further batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        stage = getattr(pl_module, "training_stage", None)
        self._batch_stage = None if stage is None else str(stage)  # read before the step moves global_step
        if stage is None:
            measured = self._flops_per_image is not None
        else:
            entry = self.stages.setdefault(self._batch_stage, {"images": 0, "flops_per_image": None})
            measured = entry["flops_per_image"] is not None
        if not measured and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()  # left in on_train_batch_end: forward, backward and optimizer step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = int(batch[0].shape[0])
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            flops_per_image = self._counter.get_total_flops() / n  # per image of this rank's batch
            if self._batch_stage is None:
                self._flops_per_image = flops_per_image
            else:
                self.stages[self._batch_stage]["flops_per_image"] = flops_per_image
            if self.flops_batch_images is None:
                self.flops_batch_images = n
            self._counter = None
        self.images += n * trainer.world_size
        if self._batch_stage is not None:
            self.stages[self._batch_stage]["images"] += n * trainer.world_size
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

    def stage_summary(self) -> dict[str, dict[str, Any]]:
        """Per stage (staged models): images seen, FLOPs per image (measured on its first batch), FLOPs."""
        out = {}
        for name, s in self.stages.items():
            fpi = s["flops_per_image"]
            out[name] = {"images": s["images"], "flops_per_image": fpi,
                         "flops": None if fpi is None else fpi * s["images"]}
        return out

    def summary(self, optimizer_steps: int, stopped_by: str) -> dict[str, Any]:
        """The record's ``compute.training`` entry (``stopped_by`` as :meth:`stopped_by` says); a staged
        model's ``train_flops_per_image`` is the average over the images seen, with ``stages`` beside it."""
        total = self.train_flops
        out = {
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
        if self.staged:
            out["stages"] = self.stage_summary()
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {"images": self.images, "batches": self.batches, "flops_per_image": self._flops_per_image,
                 "flops_batch_images": self.flops_batch_images}
        if self.staged:
            state["stages"] = {name: dict(s) for name, s in self.stages.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images = int(state_dict.get("images", 0))
        self.batches = int(state_dict.get("batches", 0))
        self._flops_per_image = state_dict.get("flops_per_image")
        self.flops_batch_images = state_dict.get("flops_batch_images")
        self.stages = {str(name): {"images": int(s["images"]), "flops_per_image": s["flops_per_image"]}
                       for name, s in (state_dict.get("stages") or {}).items()}


def sampling_cost(model: Any, n: int = 4, seed: int = 0) -> dict[str, Any]:
    """FLOPs per generated image of ``model.sample`` (counted on ``n`` images, in eval mode, no grad) and
    the network evaluations per image that the model's sampler declares."""
    with eval_mode(model):
        with torch.no_grad():
            _, flops = count_flops(model.sample, n, generator=torch.Generator(device=model.device).manual_seed(seed))
    return {"flops_per_image": flops / n, "counted_on_images": n,
            "network_evaluations_per_image": model.sampler_info().get("network_evaluations"),
            "flop_counter": FLOP_COUNTER}
