"""Callbacks the bench runner attaches to every fit: training throughput, sample grids, gradient norms.

They stay outside ``genbench.models`` so that models log only through ``self.log``; the W&B-specific
part (images) lives here and works with any logger that has ``log_image``. The learning rate comes from
Lightning's own ``LearningRateMonitor``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from genbench.bench.plots import save_sample_grid


class TrainThroughput(L.Callback):
    """Wall time spent in training batches and images/s across all ranks (validation time excluded).

    The totals are part of the callback state, so a resumed run keeps counting where it stopped. The running
    images/s is logged as ``train/images_per_s``. (Lightning's ``ThroughputMonitor`` times from the start of
    training, so the quality-curve evaluations inside the fit would count as training time.)
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.images = 0
        self._t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is not None:
            self.train_seconds += time.perf_counter() - self._t0
            self.images += int(batch[0].shape[0]) * trainer.world_size
            self._t0 = None
            pl_module.log("train/images_per_s", self.images_per_s, on_step=True, on_epoch=False)

    @property
    def images_per_s(self) -> float:
        return self.images / self.train_seconds if self.train_seconds > 0 else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"train_seconds": self.train_seconds, "images": self.images}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_seconds = float(state_dict.get("train_seconds", 0.0))
        self.images = int(state_dict.get("images", 0))


class SampleGrid(L.Callback):
    """After each validation: a fixed-seed sample grid saved under ``dirpath`` and sent to the logger; for a
    class-conditional model one row of ``CONDITIONAL_COLUMNS`` samples per class (class 0 at the top)."""

    CONDITIONAL_COLUMNS = 8

    def __init__(self, dirpath: Path, n: int = 64, seed: int = 0) -> None:
        self.dirpath = Path(dirpath)
        self.n = n
        self.seed = seed

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        generator = torch.Generator().manual_seed(self.seed)
        nrow = None
        if pl_module.class_conditional and not pl_module.is_continuous:
            nrow = self.CONDITIONAL_COLUMNS
            labels = torch.arange(pl_module.num_classes).repeat_interleave(nrow)
            samples = pl_module.sample(len(labels), generator=generator, labels=labels)
        else:
            samples = pl_module.sample(self.n, generator=generator)
        path = save_sample_grid(samples, self.dirpath / f"step{trainer.global_step:07d}.png",
                                title=f"step {trainer.global_step}", levels=max(pl_module.num_levels, 2), nrow=nrow)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[str(path)], step=trainer.global_step)


class GradNormMonitor(L.Callback):
    """Logs the L2 norm of the gradients each optimizer is about to apply, before any clipping.

    ``grad_norm/total`` for a model with one optimizer; ``grad_norm/opt<i>`` for each of several (a GAN's
    discriminator and generator), so a diverging player is visible. Norms come from
    ``torch.nn.utils.get_total_norm`` over the parameters of the optimizer's groups; like every metric they are
    written to the loggers every ``trainer.log_every_n_steps`` steps.
    """

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        raw = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        grads = [p.grad for group in raw.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]
        name = "grad_norm/total" if len(optimizers) < 2 else f"grad_norm/opt{optimizers.index(raw)}"
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        pl_module.log(name, norm, on_step=True, on_epoch=False)


class VersionlessProgressBar(TQDMProgressBar):
    """Lightning's progress bar without ``v_num``: with a W&B and a CSV logger it shows the tails of both
    versions joined (``v_num=47_0``), which names nothing a user can look up."""

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def drop_version_from_progress_bar(trainer: L.Trainer) -> None:
    """Replace the trainer's default ``TQDMProgressBar`` (if that is its bar) by :class:`VersionlessProgressBar`."""
    bar = trainer.progress_bar_callback
    if type(bar) is TQDMProgressBar:
        i = trainer.callbacks.index(bar)
        trainer.callbacks[i] = VersionlessProgressBar(refresh_rate=bar.refresh_rate,
                                                      process_position=bar.process_position,
                                                      leave=getattr(bar, "_leave", False))


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last checkpoint on disk predates it."""


class FiniteLossGuard(L.Callback):
    """Stops training at the first non-finite training loss or weights, naming the step.

    It checks every loss handed to backward (``on_before_backward``: automatic and manual optimisation
    alike) and raises before the optimizer can apply the damaged gradients and before any checkpoint
    callback can save them. A finite loss can still overflow into non-finite gradients and weights; so
    every checkpoint is checked as it is assembled (``on_save_checkpoint``, before anything is written),
    and one holding a NaN/inf weight is refused. Either way the last checkpoint on disk is the last good one.
    """

    def __init__(self, checkpoint_dir: Path | None = None) -> None:
        self.checkpoint_dir = checkpoint_dir

    def _where(self) -> str:
        if self.checkpoint_dir is None:
            return ""
        last = Path(self.checkpoint_dir) / "last.ckpt"
        if not last.is_file():
            return "; no checkpoint was written yet"
        try:
            state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
            good = all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
        except Exception:  # noqa: BLE001 - an unreadable file is not a good checkpoint either
            good = False
        if good:
            return f"; the last good checkpoint is {last}"
        return f"; the checkpoint on disk, {last}, is not usable either (non-finite or unreadable weights)"

    # Rerunning unchanged repeats the same steps and diverges again; a resume under another learning rate
    # is refused (the record would claim it for the whole run), so the advice is a fresh run.
    ADVICE = ("Rerunning unchanged repeats the same steps: lower the learning rate or enable "
              "gradient clipping (e.g. -- --trainer.gradient_clip_val=1.0) and pass --fresh to retrain.")

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if torch.isfinite(loss.detach()).all():
            return
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.detach().float().flatten()[0].item()}) at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}){self._where()}. {self.ADVICE}"
        )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        bad = [k for k, v in checkpoint.get("state_dict", {}).items()
               if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights after step {trainer.global_step} (epoch {trainer.current_epoch}) in "
                f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: the checkpoint was not written"
                f"{self._where()}. {self.ADVICE}"
            )


PROVENANCE_KEY = "genbench_provenance"


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of a resolved config as JSON with sorted keys: equal configs hash alike whatever the key order."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


class TrainingProvenance(L.Callback):
    """Writes into every checkpoint the commit and config hash of each invocation that trained its weights.

    A record made later from the checkpoint (``--checkpoint``, or a rerun after training finished) then
    names the code that trained the weights, not only the code that evaluated them. A resumed run keeps the
    entries of the checkpoint it resumed from and adds its own once it has trained a batch.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self._trained = False

    def set_config(self, config: dict[str, Any], git: dict[str, Any] | None = None) -> None:
        from genbench.bench.record import git_sha

        git = git_sha() if git is None else git
        self.current = {"commit": git.get("sha"), "dirty": git.get("dirty"), "config_sha256": config_sha256(config)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._trained = True

    def entries(self) -> list[dict[str, Any]]:
        entries = list(self.history)
        if self._trained and self.current is not None and (not entries or entries[-1] != self.current):
            entries.append(dict(self.current))
        return entries

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[PROVENANCE_KEY] = {"history": self.entries()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self.load_from(checkpoint)

    def load_from(self, checkpoint: dict[str, Any]) -> None:
        self.history = list((checkpoint.get(PROVENANCE_KEY) or {}).get("history") or [])

    def record_fields(self) -> dict[str, Any]:
        """``train.trained_at_commit`` / ``trained_at_dirty`` / ``config_sha256`` of the last invocation that
        trained, and every such invocation in order (``None`` for a checkpoint written without them)."""
        entries = self.entries()
        last = entries[-1] if entries else {}
        return {"trained_at_commit": last.get("commit"), "trained_at_dirty": last.get("dirty"),
                "config_sha256": last.get("config_sha256"), "trained_by": entries}
