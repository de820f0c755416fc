"""Quality along training: the cheap metrics at log-spaced points of images seen (the quality-vs-compute curve).

At each point (``EvalConfig.curve_images`` of the run's budget) the harness itself scores the model on a
reduced protocol: bits/dim of the first ``curve_likelihood_images`` test images (likelihood families) and the
domain Fréchet distance and class coverage of ``curve_samples`` samples (image data with labels); Inception
FID too with ``curve_fid``. The points are callback state (a resumed run keeps them), go to every logger as
``curve/*`` and into the record as ``train.quality_curve``; the leaderboard plots them against training PFLOP.

Curve values are comparable with each other, not with the final evaluation's (other n, other subset).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import lightning as L

from genbench.bench.budget import TrainingBudget
from genbench.bench.config import EvalConfig
from genbench.metrics import table as T
from genbench.models.base import rng_states, set_rng_states

CURVE_KEYS = tuple(m.curve_key for m in T.curve_metrics())


def curve_protocol(cfg: EvalConfig) -> EvalConfig:
    """The reduced evaluation protocol of one curve point."""
    return replace(cfg, num_samples=cfg.curve_samples, likelihood_subset=cfg.curve_likelihood_images,
                   sample_metrics=["domain"] + (["fid"] if cfg.curve_fid else []),
                   memorization_samples=0, sampler_steps_sweep=[], curve_points=0, conditional_metrics=False,
                   guidance_scales=[])


def _value(metrics: dict[str, Any], key: str, field: str = "value") -> float | None:
    m = metrics.get(key)
    return m.get(field) if isinstance(m, dict) and m.get("available", True) else None


class QualityCurve(L.Callback):
    """Scores the model when the images seen cross each curve point (rank 0; training randomness untouched)."""

    def __init__(self, cfg: EvalConfig, datamodule: Any, budget: TrainingBudget, cache_dir: str | None = None) -> None:
        self.cfg = cfg
        self.protocol = curve_protocol(cfg)
        self.datamodule = datamodule
        self.budget = budget
        self.cache_dir = cache_dir
        self.points: list[dict[str, Any]] = []

    @property
    def thresholds(self) -> list[int]:
        return self.cfg.curve_images(self.budget.train_images) if self.budget.train_images else []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = {p["point_images"] for p in self.points}
        due = [t for t in self.thresholds if t <= self.budget.images and t not in done]
        if not due:
            return
        point: dict[str, Any] = {"point_images": max(due), "images_seen": self.budget.images,
                                 "optimizer_steps": int(trainer.global_step), "train_flops": self.budget.train_flops}
        if trainer.is_global_zero:
            point.update(self.measure(pl_module))
            metrics = {f"curve/{k}": float(v) for k, v in point.items()
                       if k in (*CURVE_KEYS, "images_seen") and v is not None}
            if point["train_flops"] is not None:
                metrics["curve/train_pflop"] = point["train_flops"] / 1e15
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.points.extend({**point, "point_images": t} if t != point["point_images"] else point for t in due)

    def measure(self, model: Any) -> dict[str, Any]:
        """The curve metrics of ``model`` now, with the global RNG streams restored afterwards."""
        from genbench.bench.evaluate import evaluate

        saved = rng_states()
        t0 = time.perf_counter()
        try:
            metrics = evaluate(model, self.datamodule, self.protocol, trainer=None, progress=False,
                               cache_dir=self.cache_dir)
        finally:
            set_rng_states(saved)
        return {
            **{m.curve_key: _value(metrics, m.key) for m in T.curve_metrics()},
            "bpd_stderr": _value(metrics, T.BPD, "stderr"),
            "n_samples": self.protocol.num_samples, "n_likelihood": self.protocol.likelihood_subset,
            "eval_wall_s": time.perf_counter() - t0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = list(state_dict.get("points", []))
