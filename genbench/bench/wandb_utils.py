"""What the bench runner sends to Weights & Biases beyond Lightning's own logging.

During training Lightning logs the models' ``self.log`` values, the learning rate (``LearningRateMonitor``),
the gradient norm (:class:`genbench.bench.callbacks.GradNormMonitor`), the quality curve (``curve/*``) and a
sample grid after each validation. At the end of a run this module adds: the final metrics in the run
summary (numbers only), the final sample grid, line plots of the quality-vs-compute curve and of FID against
sampler steps, the predicted-class histograms as bar charts, the leaderboard as a numeric table and,
on request, the final checkpoint as a model artifact. The config is the bench's resolved config, written
once (:class:`BenchWandbLogger`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from genbench.bench.record import ResultRecord, load_records
from genbench.metrics import table as T


class BenchWandbLogger(WandbLogger):
    """A ``WandbLogger`` whose run config is written once, by :func:`log_config`.

    Lightning would also log the model's and the datamodule's ``__init__`` arguments at the start of every
    fit: the same values again, flattened beside the resolved config's sections. That automatic call is
    skipped; the config of the run is the bench's resolved config (every section, as saved in config.yaml).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning always passes ``anonymous`` (None here) to wandb.init, which warns that the setting is
        # deprecated; the bench never logs anonymously, so the key is left out.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None


def log_config(logger: WandbLogger, resolved: dict[str, Any], bench: dict[str, Any]) -> None:
    """The run's config: the bench's own arguments (``bench``) and the resolved config, sections as nested keys."""
    logger.experiment.config.update({"bench": bench, **resolved}, allow_val_change=True)


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


def _log_quality_vs_compute(run: Any, record: ResultRecord) -> None:
    import wandb

    points = [p for p in record.train.get("quality_curve", []) if p.get("train_flops") is not None]
    keys = [k for k in T.plotted_curve_keys() if any(p.get(k) is not None for p in points)]
    if not keys:
        return
    table = wandb.Table(columns=["train_pflop", "images_seen", *keys],
                        data=[[p["train_flops"] / 1e15, p["images_seen"], *(p.get(k) for k in keys)] for p in points])
    run.log({f"quality_vs_compute/{k}": wandb.plot.line(table, "train_pflop", k, title=f"{k} against training PFLOP")
             for k in keys})


def _log_sampler_sweep(run: Any, record: ResultRecord) -> None:
    import wandb

    sweep = [s for s in record.metrics.get(T.FID_VS_STEPS) or [] if isinstance(s, dict) and s.get(T.FID) is not None]
    if not sweep:
        return
    table = wandb.Table(columns=["steps", T.FID, "n"], data=[[int(s["steps"]), float(s[T.FID]), s.get("n")]
                                                              for s in sorted(sweep, key=lambda s: s["steps"])])
    run.log({"sampler_sweep/fid_vs_steps": wandb.plot.line(table, "steps", T.FID, title="FID against sampler steps")})


def _log_class_histograms(run: Any, record: ResultRecord) -> None:
    import wandb

    m = record.metrics.get(T.CLASS_COVERAGE)
    if not (isinstance(m, dict) and m.get("sample_histogram") and m.get("real_histogram")):
        return
    rows = [[str(c), float(s), float(r)] for c, (s, r) in enumerate(zip(m["sample_histogram"], m["real_histogram"],
                                                                         strict=True))]
    table = wandb.Table(columns=["class", "samples", "real"], data=rows)
    run.log({"class_histogram/samples": wandb.plot.bar(table, "class", "samples",
                                                       title=f"predicted classes of {m.get('n')} samples"),
             "class_histogram/real": wandb.plot.bar(table, "class", "real",
                                                    title=f"predicted classes of {m.get('n_reference')} real images")})


def _log_conditional(run: Any, record: ResultRecord, results_dir: Path | None) -> None:
    """A class-conditional run: its per-class sample grid (one row per class) and the guidance sweep."""
    import wandb

    grid = record.artifacts.get("class_grid")
    if grid and results_dir is not None and (Path(results_dir) / grid).is_file():
        run.log({"final/samples_per_class": wandb.Image(str(Path(results_dir) / grid),
                                                        caption=f"{record.run_id}: one row per class, 0 at the top")})
    sweep = [p for p in record.metrics.get(T.GUIDANCE_SWEEP) or [] if isinstance(p, dict)]
    if sweep:
        columns = ["scale", "accuracy", T.DOMAIN_FD, *([T.FID] if any(p.get(T.FID) is not None for p in sweep) else [])]
        table = wandb.Table(columns=columns, data=[[p.get(c) for c in columns] for p in sweep])
        charts = {f"guidance/{c}": wandb.plot.line(table, "scale", c, title=f"{c} against guidance weight")
                  for c in columns[1:]}
        if T.FID in columns:
            charts["guidance/fid_vs_accuracy"] = wandb.plot.scatter(table, "accuracy", T.FID,
                                                                    title="FID against class accuracy (guidance)")
        run.log(charts)


def log_final(logger: WandbLogger, record: ResultRecord, grid_path: Path, results_dir: Path | None = None) -> None:
    """Final metrics into the run summary, the final sample grid as an image, and the structured results
    (quality-vs-compute curve, sampler sweep, class histograms; for a class-conditional run the per-class grid
    and the guidance sweep) as images, line and bar charts."""
    import wandb

    run = logger.experiment
    summary = flatten_metrics(record.metrics)
    summary.update({"final/params": record.params, "final/train_images_per_s": record.train["images_per_s"],
                    "final/train_wall_time_s": record.train["wall_time_s"]})
    summary.update(flatten_metrics(record.compute, prefix="compute"))
    run.summary.update(summary)
    run.log({"final/samples": wandb.Image(str(grid_path), caption=record.run_id)})
    _log_quality_vs_compute(run, record)
    _log_sampler_sweep(run, record)
    _log_class_histograms(run, record)
    _log_conditional(run, record, results_dir)


def log_leaderboard(logger: WandbLogger, results_dir: Path, dataset: str, profile: str) -> None:
    """The leaderboard of this dataset x profile as a ``wandb.Table`` of numbers: a row per model, a column per
    leaderboard metric (its record key), then parameters, training time and compute, and throughput."""
    import wandb

    from genbench.bench.leaderboard import numeric_rows

    rows = numeric_rows([r for r in load_records(results_dir) if r.dataset == dataset and r.profile == profile])
    if not rows:
        return
    columns = list(rows[0])
    logger.experiment.log({"leaderboard": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})


def log_checkpoint(logger: WandbLogger, checkpoint: Path, record: ResultRecord) -> None:
    """The final checkpoint as a W&B model artifact (``model-<run id>``, alias ``latest``), with the run's
    headline metrics as metadata (``--wandb-log-model``)."""
    import wandb

    metadata = {k: v for k, v in flatten_metrics(record.metrics, prefix="final").items() if "." not in k}
    metadata.update({"run_id": record.run_id, "model": record.model, "family": record.family,
                     "dataset": record.dataset, "profile": record.profile, "seed": record.seed,
                     "steps": record.train.get("steps")})
    artifact = wandb.Artifact(name=f"model-{record.run_id}", type="model", metadata=metadata)
    artifact.add_file(str(checkpoint), name=Path(checkpoint).name)
    logger.experiment.log_artifact(artifact, aliases=["latest"])


def run_location(logger: WandbLogger) -> str:
    """Where the W&B run is: its URL when online; else its local directory and how to upload it."""
    run = logger.experiment
    url = getattr(run, "url", None)
    if url:
        return str(url)
    sync_dir = getattr(run.settings, "sync_dir", None) or getattr(run, "dir", "")
    return f"{sync_dir} (offline: `wandb sync` this directory to upload it)"
