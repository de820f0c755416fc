"""``python -m genbench bench``: fit -> evaluate -> result record -> leaderboard, for one model.

Configs compose as ``configs/trainer/default.yaml``, ``configs/data/<data>.yaml``,
``configs/model/<model>.yaml``, ``configs/profile/<profile>/<model>.yaml`` and the profile's shared
``configs/profile/<profile>/evaluation.yaml``; anything after ``--`` is passed
to the LightningCLI parser (e.g. ``-- --trainer.max_steps 100``). Each run lives in
``runs/<data>/<profile>/<model>/seed<seed>/`` (checkpoints, resolved config, sample grids, W&B files);
rerunning the same command resumes from its last checkpoint. The model evaluated is the last one trained:
no checkpoint is selected by a reported metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import yaml

from genbench.bench.config import EvalConfig
from genbench.bench.record import ResultRecord, atomic_write_text, environment, redact, write_record
from genbench.io import file_lock

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGS = REPO_ROOT / "configs"
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
DEFAULT_RUNS = REPO_ROOT / "runs"
CHECKPOINT_EVERY = "1m"


class BenchError(RuntimeError):
    """A benchmark cannot start: the message names the problem and the fix."""


def profiles(configs_dir: Path, model: str | None = None) -> list[str]:
    out = []
    for d in sorted(p for p in (configs_dir / "profile").iterdir() if p.is_dir()):
        if model is None or (d / f"{model}.yaml").is_file():
            out.append(d.name)
    return out


def config_files(configs_dir: Path, model: str, data: str, profile: str) -> list[Path]:
    """The YAML files of a run, in composition order; raises BenchError listing valid values."""
    from genbench.data import dataset_names
    from genbench.models import registry

    registry.import_all()
    if model not in registry.model_names():
        raise BenchError(f"unknown MODEL {model!r}; valid: {', '.join(registry.model_names())}")
    if data not in dataset_names():
        raise BenchError(f"unknown DATA {data!r}; valid: {', '.join(dataset_names())}")
    valid_profiles = profiles(configs_dir, model)
    if profile not in valid_profiles:
        raise BenchError(f"unknown PROFILE {profile!r} for MODEL {model!r}; valid: {', '.join(valid_profiles)}")
    files = [configs_dir / "trainer" / "default.yaml", configs_dir / "data" / f"{data}.yaml",
             configs_dir / "model" / f"{model}.yaml", configs_dir / "profile" / profile / f"{model}.yaml"]
    files += shared_profile_files(configs_dir, profile)
    for f in files:
        if not f.is_file():
            raise BenchError(f"missing config file {f}")
        try:
            yaml.safe_load(f.read_text())
        except yaml.YAMLError as err:
            raise BenchError(f"malformed YAML in {f}: {err}") from err
    return files


def shared_profile_files(configs_dir: Path, profile: str) -> list[Path]:
    """``configs/profile/<profile>/evaluation.yaml`` when it exists: the protocol every model of the profile
    shares (the likelihood subset), composed last so that no model's own file can give it other images."""
    shared = configs_dir / "profile" / profile / "evaluation.yaml"
    return [shared] if shared.is_file() else []


def wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        auth = netrc.netrc().authenticators("api.wandb.ai")
        return bool(auth and auth[2])
    except (OSError, netrc.NetrcParseError):
        return False


def make_logger(run_id: str, run_dir: Path, group: str, tags: list[str], enabled: bool, fresh: bool = False):
    """A WandbLogger (project ``genbench``): offline when no API key is configured, resumable by run dir."""
    if not enabled or os.environ.get("WANDB_MODE") == "disabled":
        return False
    if not os.environ.get("WANDB_MODE") and not wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"  # no key: write the run locally; `wandb sync` uploads it later
    from lightning.pytorch.loggers import WandbLogger

    id_file = run_dir / "wandb_id.txt"
    if id_file.is_file() and not fresh:
        wandb_id = id_file.read_text().strip()
    else:
        wandb_id = f"{run_id}-{int(time.time())}"
        if not fresh:  # --fresh writes it once the config is validated and the old run deleted
            atomic_write_text(id_file, wandb_id + "\n")
    return WandbLogger(project=os.environ.get("WANDB_PROJECT", "genbench"), name=run_id, id=wandb_id, resume="allow",
                       group=group, tags=tags, save_dir=str(run_dir), log_model=False)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a clear error for a missing, truncated or corrupted file."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, unsafe types...
        raise BenchError(
            f"checkpoint {path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}); it is "
            "corrupted or truncated, or not a checkpoint. Delete it to train from the previous state, or pass "
            "--fresh to start over."
        ) from err
    if not isinstance(state, dict) or "state_dict" not in state:
        raise BenchError(f"checkpoint {path} has no state_dict; it is not a Lightning checkpoint")
    return state


class RunLock:
    """An exclusive lock on a run directory, so that two runs of the same benchmark never interleave."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._held: ExitStack | None = None

    def __enter__(self) -> RunLock:
        held = ExitStack()
        try:
            held.enter_context(file_lock(self.path, wait=False))
        except BlockingIOError:
            raise BenchError(f"another bench run is using {self.path.parent}; wait for it or use another SEED") from None
        except OSError as err:
            raise BenchError(f"cannot create the run directory {self.path.parent} ({err.strerror or err}); pass "
                             "--runs-dir DIR naming a writable directory") from None
        self._held = held
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m genbench bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="gan | vae | realnvp | ddpm")
    p.add_argument("--data", default="mnist", help="dataset name (default mnist)")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", default="auto", help="trainer devices (e.g. 1, 2, auto)")
    p.add_argument("--accelerator", default=None, help="cpu | gpu | auto (default: from the trainer config)")
    p.add_argument("--precision", default=None, help="e.g. 32-true, bf16-mixed, 16-mixed (default: from config)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--configs-dir", type=Path, default=DEFAULT_CONFIGS)
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="evaluate this checkpoint instead of training (e.g. runs/.../checkpoints/last.ckpt)")
    p.add_argument("--checkpoint-every", default=CHECKPOINT_EVERY,
                   help="write runs/.../last.ckpt every N training steps (e.g. 500) or every span of training "
                        f"time (90s, 5m, 1h); default {CHECKPOINT_EVERY}")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and train from scratch")
    p.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases")
    p.add_argument("--no-leaderboard", action="store_true", help="do not rebuild the leaderboard afterwards")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv), extra


def _launch_rank() -> int:
    """This process's global rank as set by a launcher (torchrun, SLURM, Lightning's DDP), before any setup."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def run(args: argparse.Namespace, extra: list[str]) -> Path | None:
    """Run one benchmark; returns the record path on rank 0 (None on other ranks)."""
    from genbench.bench import guards

    guards.check_seed(args.seed)
    guards.check_fresh_flags(args.fresh, args.checkpoint)
    run_dir = args.runs_dir / args.data / args.profile / args.model / f"seed{args.seed}"
    if _launch_rank() != 0:
        return _run(args, extra)
    config_files(args.configs_dir, args.model, args.data, args.profile)  # bad names fail before any directory is made
    guards.check_extra_configs(extra)
    if not args.no_leaderboard and args.checkpoint is None:
        guards.check_leaderboard_writable(args.results_dir)
    with RunLock(run_dir):
        return _run(args, extra)


def _run(args: argparse.Namespace, extra: list[str]) -> Path | None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from genbench.bench import guards
    from genbench.bench.budget import STOPPED_BY_BUDGET, TrainingBudget, sampling_cost
    from genbench.bench.callbacks import FiniteLossGuard, SampleGrid, TrainingProvenance, TrainThroughput
    from genbench.bench.checkpointing import AtomicCheckpointIO, parse_checkpoint_every
    from genbench.bench.curve import QualityCurve
    from genbench.bench.evaluate import evaluate
    from genbench.bench.plots import save_sample_grid
    from genbench.cli import make_cli
    from genbench.models import registry

    files = config_files(args.configs_dir, args.model, args.data, args.profile)
    try:
        cadence = parse_checkpoint_every(args.checkpoint_every)
    except ValueError as err:
        raise BenchError(str(err)) from None
    family = registry.model_class(args.model).family
    run_id = f"{args.data}-{args.profile}-{args.model}-seed{args.seed}"
    run_dir = args.runs_dir / args.data / args.profile / args.model / f"seed{args.seed}"
    results_dir = args.results_dir
    eval_state = None
    if args.checkpoint is not None:  # eval-only: its own id and directories, never the trained run's
        eval_state = guards.load_checkpoint_checked(args.checkpoint, resuming=False)
        run_id, run_dir, results_dir = guards.eval_identity(run_id, run_dir, results_dir, args.checkpoint)
    ckpt_dir = run_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    for what, d in (("results", results_dir), ("runs", run_dir)):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BenchError(f"cannot create the {what} directory {d} ({err.strerror or err}); pass --{what}-dir "
                             "DIR naming a writable directory") from None
        if not os.access(d, os.W_OK):
            raise BenchError(f"{what} directory {d} is not writable; pass --{what}-dir DIR naming a writable one")

    cli_args = [f"--config={f}" for f in files] + [
        f"--seed_everything={args.seed}",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.devices={args.devices}",
        f"--trainer.num_nodes={args.num_nodes}",
    ]
    if args.accelerator:
        cli_args.append(f"--trainer.accelerator={args.accelerator}")
    if args.precision:
        cli_args.append(f"--trainer.precision={args.precision}")
    cli_args += ["--trainer.enable_progress_bar=false"] if args.no_progress else []
    cli_args += extra

    throughput = TrainThroughput()
    provenance = TrainingProvenance()
    callbacks = [
        FiniteLossGuard(ckpt_dir),
        throughput,
        provenance,
        ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, **cadence),
        SampleGrid(run_dir / "samples"),
    ]
    logger = make_logger(run_id, run_dir, group=f"{args.data}-{args.profile}",
                         tags=[family, args.model, args.data, args.profile], enabled=not args.no_wandb,
                          fresh=args.fresh)
    csv_logger = CSVLogger(save_dir=str(run_dir), name="csv")  # a new version per invocation: resumes append
    cli = make_cli(cli_args, run=False, save_config_callback=None,
                   trainer_defaults={"callbacks": callbacks, "logger": [lg for lg in (logger, csv_logger) if lg],
                                     "plugins": [AtomicCheckpointIO()]})
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    resolved = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    resolved = redact(resolved)
    provenance.set_config(resolved)
    eval_cfg = EvalConfig(**resolved.get("evaluation", {}))
    guards.check_inception_weights(eval_cfg, dm)
    guards.check_protocol(eval_cfg, model)
    resume_state = None
    if args.checkpoint is None and last_ckpt.is_file() and not args.fresh:
        resume_state = guards.load_checkpoint_checked(last_ckpt, resuming=True)
        guards.check_resume_config(run_dir / "config.yaml", resolved, run_id)
    if args.fresh and _launch_rank() == 0:  # the launcher's rank: DDP children exist only once fit starts
        guards.start_fresh(run_dir)  # last: the config and every name above are valid
        if logger:
            atomic_write_text(run_dir / "wandb_id.txt", f"{logger.version}\n")
    if trainer.is_global_zero:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    budget = next(cb for cb in trainer.callbacks if isinstance(cb, TrainingBudget))
    curve = QualityCurve(eval_cfg, dm, budget)
    # before the checkpoint callbacks, so that a checkpoint taken at a curve point holds that point
    first_ckpt = next(i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, ModelCheckpoint))
    trainer.callbacks.insert(first_ckpt, curve)
    if logger:
        logger.log_hyperparams({"bench": {"model": args.model, "data": args.data, "profile": args.profile,
                                          "seed": args.seed}, **resolved})

    t0 = time.perf_counter()
    if args.checkpoint is not None:
        # Evaluate a given checkpoint without training: the validation loop starts the strategy (and, under
        # DDP, the other ranks), then every rank runs the distributed-aware evaluation.
        guards.load_weights(model, eval_state, args.checkpoint, args.model)
        restore_callback_states(eval_state, (budget, curve, throughput))  # the training it records
        provenance.load_from(eval_state)  # the commit and config that trained these weights
        ckpt_path = str(args.checkpoint)
        trainer.validate(model, datamodule=dm, verbose=False)
    else:
        ckpt_path = str(last_ckpt) if resume_state is not None else None
        if ckpt_path and trainer.is_global_zero:
            print(f"genbench: resuming {run_id} from {ckpt_path}")
        guards.fit(trainer, model, dm, ckpt_path, run_id, last_ckpt)
        trainer.save_checkpoint(last_ckpt, weights_only=False)  # full state, so a rerun can resume
    fit_wall_s = time.perf_counter() - t0

    model = model.to(trainer.strategy.root_device)
    model.eval()
    t1 = time.perf_counter()
    metrics = evaluate(model, dm, eval_cfg, trainer=trainer, progress=not args.no_progress)
    eval_wall_s = time.perf_counter() - t1
    if not trainer.is_global_zero:
        return None

    if args.checkpoint is not None:
        steps = int(eval_state.get("global_step", 0))
        stopped_by = STOPPED_BY_BUDGET if budget.spent else "unknown (evaluated from a checkpoint)"
    else:
        steps, stopped_by = int(trainer.global_step), budget.stopped_by(trainer)
    grid_path = results_dir / "samples" / f"{run_id}.png"
    samples = model.sample(64, generator=torch.Generator().manual_seed(args.seed))
    save_sample_grid(samples, grid_path, title=run_id, levels=max(model.num_levels, 2))
    record = ResultRecord(
        run_id=run_id, model=args.model, family=family, dataset=args.data, profile=args.profile, seed=args.seed,
        metrics=metrics, params=model.num_parameters(),
        train={"wall_time_s": throughput.train_seconds, "images": throughput.images,
               "images_per_s": throughput.images_per_s, "fit_wall_s_this_invocation": fit_wall_s,
               "steps": steps, "epochs": trainer.current_epoch, "resumed_from": ckpt_path,
               "precision": str(trainer.precision), "world_size": trainer.world_size,
               "torch_threads": torch.get_num_threads(),
               "checkpoint": "last (no selection by a reported metric)",
               "curves": read_curves(run_dir / "csv"), "quality_curve": curve.points},
        compute={"training": budget.summary(steps, stopped_by), "sampling": sampling_cost(model)},
        evaluation={**eval_cfg.to_dict(), "wall_time_s": eval_wall_s},
        data=dm.describe(), model_info=model.describe(), environment=environment(), config=resolved,
        artifacts={"sample_grid": os.path.relpath(grid_path, results_dir), "run_dir": str(run_dir)},
    )
    record.train.update(provenance.record_fields())
    path = write_record(record, results_dir)
    print(f"genbench: wrote {path}")
    if logger:
        from genbench.bench.wandb_utils import log_final

        log_final(logger, record, grid_path)
    if not args.no_leaderboard and args.checkpoint is None:
        from genbench.bench.leaderboard import build

        outputs = build(args.results_dir, args.results_dir.parent)
        print("genbench: leaderboard -> " + ", ".join(str(p) for p in outputs))
        if logger:
            from genbench.bench.wandb_utils import log_leaderboard

            log_leaderboard(logger, args.results_dir, args.data, args.profile)
    if logger:
        logger.experiment.finish()
    print(json.dumps(summary_line(record)))
    return path


def restore_callback_states(checkpoint: dict[str, Any], callbacks: tuple[Any, ...]) -> None:
    """Load ``callbacks``' states from a Lightning checkpoint (keyed by each callback's state key)."""
    states = checkpoint.get("callbacks") or {}
    for cb in callbacks:
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])


CURVE_KEYS = ("train/loss", "val/loss", "val/bpd")


def read_curves(csv_dir: Path, max_points: int = 200) -> dict[str, list[list[float]]]:
    """Training curves from every CSV-logger version of a run (a resumed run adds one), downsampled."""
    import csv

    versions = sorted(Path(csv_dir).glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    curves: dict[str, list[list[float]]] = {}
    for metrics_csv in versions:
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                for key in CURVE_KEYS:
                    if row.get(key) not in (None, "") and row.get("step") not in (None, ""):
                        curves.setdefault(key, []).append([int(float(row["step"])), float(row[key])])
    for key, pts in curves.items():
        stride = max(1, len(pts) // max_points)
        curves[key] = pts[::stride]
    return curves


def summary_line(record: ResultRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": record.run_id}
    from genbench.metrics import table

    for key in (m.key for m in table.summary_metrics()):
        m = record.metrics.get(key)
        if isinstance(m, dict) and m.get("value") is not None:
            out[key] = m["value"]
    out["train_images_per_s"] = record.train["images_per_s"]
    return out


def main(argv: list[str]) -> int:
    from genbench.bench.callbacks import NonFiniteLossError
    from genbench.data.sources import DataSourceError
    from genbench.io import DiskFullError
    from genbench.metrics.inception import InceptionWeightsError

    args, extra = parse_args(argv)
    try:
        run(args, extra)
    except (BenchError, DataSourceError, InceptionWeightsError, DiskFullError) as err:
        print(f"genbench bench: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"genbench bench: {err}", file=sys.stderr)
        return 3
    return 0
