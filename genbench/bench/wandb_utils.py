"""What the bench runner sends to Weights & Biases beyond Lightning's own logging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genbench.bench.record import ResultRecord, load_records
from genbench.metrics import table as T


def flatten_metrics(metrics: dict[str, Any], prefix: str = "final") -> dict[str, float]:
    """``{"fid": {"value": 3.1, "n": 500}}`` -> ``{"final/fid": 3.1, "final/fid.n": 500}`` (numbers only)."""
    out: dict[str, float] = {}
    for name, m in metrics.items():
        if isinstance(m, dict):
            for k, v in m.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{prefix}/{name}" if k == "value" else f"{prefix}/{name}.{k}"] = v
        elif isinstance(m, (int, float)) and not isinstance(m, bool):
            out[f"{prefix}/{name}"] = m
    return out


def log_final(logger, record: ResultRecord, grid_path: Path) -> None:
    """Final metrics into the run summary and the final sample grid as an image."""
    import wandb

    summary = flatten_metrics(record.metrics)
    summary.update({"final/params": record.params, "final/train_images_per_s": record.train["images_per_s"],
                    "final/train_wall_time_s": record.train["wall_time_s"]})
    summary.update(flatten_metrics(record.compute, prefix="compute"))
    logger.experiment.summary.update(summary)
    logger.experiment.log({"final/samples": wandb.Image(str(grid_path))})
    points = [p for p in record.train.get("quality_curve", []) if p.get("train_flops") is not None]
    if points:
        keys = [k for k in T.plotted_curve_keys() if any(p.get(k) is not None for p in points)]
        table = wandb.Table(columns=["train_pflop", "images_seen", *keys],
                            data=[[p["train_flops"] / 1e15, p["images_seen"], *(p.get(k) for k in keys)] for p in points])
        logger.experiment.log({f"quality_vs_compute/{k}": wandb.plot.line(table, "train_pflop", k,
                                                                          title=f"{k} against training PFLOP")
                               for k in keys})


def log_leaderboard(logger, results_dir: Path, dataset: str, profile: str) -> None:
    """The leaderboard of this dataset x profile as a ``wandb.Table``."""
    import wandb

    from genbench.bench.leaderboard import table_rows

    rows = table_rows([r for r in load_records(results_dir) if r.dataset == dataset and r.profile == profile])
    if not rows:
        return
    columns = list(rows[0].keys())
    logger.experiment.log({"leaderboard": wandb.Table(columns=columns, data=[[str(r[c]) for c in columns] for r in rows])})
