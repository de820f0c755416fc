"""``python -m genbench bench``: fit -> evaluate -> result record -> leaderboard, for one model.

Configs compose as ``configs/trainer/default.yaml``, ``configs/data/<data>.yaml``,
``configs/model/<model>.yaml``, ``configs/profile/<profile>/<model>.yaml``, with ``--class-conditional``
``configs/conditional/<model>.yaml``, and the profile's shared
``configs/profile/<profile>/evaluation.yaml``; anything after ``--`` is passed
to the LightningCLI parser (e.g. ``-- --trainer.max_steps 100``). Each run lives in
``runs/<data>/<profile>/<model>/seed<seed>/`` (checkpoints, resolved config, sample grids, W&B files);
rerunning the same command resumes from its last checkpoint. The model evaluated is the last one trained:
no checkpoint is selected by a reported metric.
"""

from __future__ import annotations

import argparse
import csv
import json
import netrc
import os
import re
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from genbench import paths
from genbench.bench import console, guards
from genbench.bench.budget import STOPPED_BY_BUDGET, TrainingBudget, sampling_cost
from genbench.bench.callbacks import (
    FiniteLossGuard,
    GradNormMonitor,
    NonFiniteLossError,
    SampleGrid,
    TrainingProvenance,
    TrainThroughput,
    drop_version_from_progress_bar,
)
from genbench.bench.checkpointing import AtomicCheckpointIO, PeriodicCheckpoint, parse_checkpoint_every
from genbench.bench.config import EvalConfig
from genbench.bench.curve import QualityCurve
from genbench.bench.evaluate import evaluate
from genbench.bench.guards import BenchError, load_checkpoint  # noqa: F401 (part of this module's interface)
from genbench.bench.leaderboard import build as build_leaderboard
from genbench.bench.plots import save_sample_grid
from genbench.bench.record import ResultRecord, atomic_write_text, environment, redact, write_record
from genbench.bench.wandb_utils import (
    BenchWandbLogger,
    log_checkpoint,
    log_config,
    log_final,
    log_leaderboard,
    run_location,
)
from genbench.data import dataset_names, dataset_spec, external
from genbench.data.sources import DataSourceError
from genbench.io import DiskFullError, file_lock
from genbench.lightning_cli import make_cli
from genbench.metrics.inception import InceptionWeightsError
from genbench.metrics.table import EXTRACTION_RATE
from genbench.models import registry

CHECKPOINT_EVERY = "1m"


def profiles(configs_dir: Path, model: str | None = None) -> list[str]:
    out = []
    for d in sorted(p for p in (configs_dir / "profile").iterdir() if p.is_dir()):
        if model is None or (d / f"{model}.yaml").is_file():
            out.append(d.name)
    return out


CUSTOM_MODEL_PROFILE = "custom"  # profile/<profile>/custom.yaml: budget and protocol for a model given by class path


@dataclass(frozen=True)
class Names:
    """What ``--model``/``--data``/``--run-name`` resolve to: the names a run is filed under."""

    model: str  # registry name, or the class name of a model given by class path
    class_path: str | None  # "pkg.module.Class" for a model outside the registry
    family: str
    data: str  # the dataset's file-name-safe name (own data: with a content hash)
    data_spec: str  # as given (a name, folder:PATH or hf:ID[:COLUMN])


def resolve_model(model: str) -> tuple[str, str | None, str]:
    """``(name, class_path or None, family)`` of a registry name or a ``pkg.module.Class`` path."""
    registry.import_all()
    if model in registry.model_names():
        return model, None, registry.model_class(model).family
    if "." not in model and ":" not in model:
        raise BenchError(f"unknown MODEL {model!r}; valid: {', '.join(registry.model_names())}, or the class path "
                         "of your own GenerativeModel subclass (pkg.module.Class)")
    try:
        cls = registry.class_from_path(model)
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise BenchError(f"MODEL {model!r}: {err}") from None
    return cls.__name__.lower(), f"{cls.__module__}.{cls.__qualname__}", cls.family


def resolve_names(model: str, data: str) -> Names:
    name, class_path, family = resolve_model(model)
    if not external.is_external(data) and data not in dataset_names():
        raise BenchError(f"unknown DATA {data!r}; valid: {', '.join(dataset_names())}, or your own images as "
                         "folder:PATH or hf:DATASET_ID[:IMAGE_COLUMN]")
    try:
        slug = dataset_spec(data).name
    except DataSourceError as err:
        raise BenchError(str(err)) from None
    return Names(model=name, class_path=class_path, family=family, data=slug, data_spec=data)


def conditional_models(configs_dir: Path) -> list[str]:
    """The models with a class-conditional variant (``configs/conditional/<model>.yaml``)."""
    d = configs_dir / "conditional"
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def config_files(configs_dir: Path, model: str, data: str, profile: str,
                 class_conditional: bool = False) -> list[Path]:
    """The YAML files of a run, in composition order; raises BenchError listing valid values.

    A model given by class path composes ``profile/<profile>/custom.yaml`` (budget and protocol, no model
    arguments) instead of the files of a registered model; own data (``folder:``/``hf:``) has no data file."""
    names = resolve_names(model, data)
    model_key = names.model if names.class_path is None else CUSTOM_MODEL_PROFILE
    valid_profiles = profiles(configs_dir, model_key)
    if profile not in valid_profiles:
        raise BenchError(f"unknown PROFILE {profile!r} for MODEL {model!r}; valid: {', '.join(valid_profiles)}")
    files = [configs_dir / "trainer" / "default.yaml"]
    if not external.is_external(data):
        files.append(configs_dir / "data" / f"{data}.yaml")
    if names.class_path is None:
        files.append(configs_dir / "model" / f"{model}.yaml")
    files.append(configs_dir / "profile" / profile / f"{model_key}.yaml")
    if class_conditional:
        if names.class_path is not None or model not in conditional_models(configs_dir):
            raise BenchError(f"MODEL {model!r} has no class-conditional variant (configs/conditional/{model}.yaml); "
                             f"COND=1 works with: {', '.join(conditional_models(configs_dir))}. A model of your own "
                             "takes -- --model.init_args.class_conditional=true instead")
        if dataset_spec(data).num_classes < 2:
            raise BenchError(f"DATA {data!r} has no class labels, so there is nothing to condition on; "
                             "COND=1 needs a labelled dataset such as mnist or fashion_mnist")
        files.append(configs_dir / "conditional" / f"{model}.yaml")
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

    id_file = run_dir / "wandb_id.txt"
    if id_file.is_file() and not fresh:
        wandb_id = id_file.read_text().strip()
    else:
        wandb_id = f"{run_id}-{int(time.time())}"
        if not fresh:  # --fresh writes it once the config is validated and the old run deleted
            atomic_write_text(id_file, wandb_id + "\n")
    return BenchWandbLogger(project=os.environ.get("WANDB_PROJECT", "genbench"), name=run_id, id=wandb_id,
                            resume="allow", group=group, tags=tags, save_dir=str(run_dir), log_model=False)


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
    p.add_argument("--model", default=None,
                   help="gan | vae | realnvp | ddpm | ldm, or the class path of your own GenerativeModel (pkg.module.Class); "
                        "required unless --checkpoint names it")
    p.add_argument("--data", default=None,
                   help="dataset name (default mnist, or the checkpoint's), or your own images: folder:PATH or "
                        "hf:DATASET_ID[:IMAGE_COLUMN]")
    p.add_argument("--run-name", default=None,
                   help="a variant's name: the run is filed as <data>-<profile>-<model>-<run-name>-seed<seed> "
                        "(e.g. for the same model with other -- overrides)")
    p.add_argument("--class-conditional", action="store_true",
                   help="train and score the class-conditional variant p(x | y) (configs/conditional/<model>.yaml); "
                        f"the run is filed as <data>-<profile>-<model>-{CONDITIONAL_RUN_NAME}-seed<seed>")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", default="auto", help="trainer devices (e.g. 1, 2, auto)")
    p.add_argument("--accelerator", default=None, help="cpu | gpu | auto (default: from the trainer config)")
    p.add_argument("--precision", default=None, help="e.g. 32-true, bf16-mixed, 16-mixed (default: from config)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"root of the outputs: runs/ and benchmarks/ (results, leaderboard) go under it "
                        f"(default: ${paths.HOME_ENV}, else the working directory)")
    p.add_argument("--configs-dir", type=Path, default=None,
                   help=f"the config tree (default: ${paths.CONFIGS_ENV}, else the one shipped with genbench)")
    p.add_argument("--results-dir", type=Path, default=None,
                   help="result records (default: OUTPUT_DIR/benchmarks/results; smoke runs OUTPUT_DIR/benchmarks/smoke/results)")
    p.add_argument("--runs-dir", type=Path, default=None, help="run directories (default: OUTPUT_DIR/runs)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="evaluate this checkpoint instead of training (e.g. runs/.../checkpoints/last.ckpt)")
    p.add_argument("--checkpoint-every", default=CHECKPOINT_EVERY,
                   help="write runs/.../last.ckpt every N training steps (e.g. 500) or every span of training "
                        f"time (90s, 5m, 1h); default {CHECKPOINT_EVERY}")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and train from scratch")
    p.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases")
    p.add_argument("--wandb-log-model", action="store_true",
                   help="also upload the final checkpoint to W&B as a model artifact (model-<run id>)")
    p.add_argument("--no-leaderboard", action="store_true", help="do not rebuild the leaderboard afterwards")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    if args.model is None and args.checkpoint is None:
        p.error("--model is required (a registered name or pkg.module.Class), unless --checkpoint names it")
    if args.checkpoint is None and args.data is None:
        args.data = DEFAULT_DATA
    if args.run_name is not None and not RUN_NAME.fullmatch(args.run_name):
        p.error(f"--run-name {args.run_name!r}: use letters, digits, '_', '.' and '-' only")
    args.output_root = root = paths.output_root(args.output_dir)
    args.configs_dir = paths.configs_dir(args.configs_dir)
    args.results_dir = args.results_dir if args.results_dir is not None else paths.results_dir(root, args.profile)
    args.runs_dir = args.runs_dir if args.runs_dir is not None else paths.runs_dir(root)
    return args, extra


RUN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
CONDITIONAL_RUN_NAME = "cond"  # the run-name part of a class-conditional variant's run id


def run_identity(names: Names, args: argparse.Namespace) -> tuple[str, Path]:
    """The run id and run directory of a bench invocation (before any eval-only renaming)."""
    parts = [names.model, CONDITIONAL_RUN_NAME if getattr(args, "class_conditional", False) else None, args.run_name]
    model_dir = "-".join(p for p in parts if p)
    run_id = f"{names.data}-{args.profile}-{model_dir}-seed{args.seed}"
    return run_id, args.runs_dir / names.data / args.profile / model_dir / f"seed{args.seed}"


def _launch_rank() -> int:
    """This process's global rank as set by a launcher (torchrun, SLURM, Lightning's DDP), before any setup."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def run(args: argparse.Namespace, extra: list[str]) -> Path | None:
    """Run one benchmark; returns the record path on rank 0 (None on other ranks)."""
    guards.check_seed(args.seed)
    guards.check_fresh_flags(args.fresh, args.checkpoint)
    if args.checkpoint is not None and not hasattr(args, "checkpoint_model"):
        apply_checkpoint_identity(args)
    if _launch_rank() != 0:
        return _run(args, extra)
    config_files(args.configs_dir, args.model, args.data, args.profile, args.class_conditional)  # bad names fail first
    names = resolve_names(args.model, args.data)
    if external.is_external(args.data):
        print("genbench: data " + external.describe_inferred(external.load_external(args.data)))
    _, run_dir = run_identity(names, args)
    guards.check_extra_configs(extra)
    if not args.no_leaderboard and args.checkpoint is None:
        guards.check_leaderboard_writable(args.results_dir)
    with RunLock(run_dir):
        return _run(args, extra)


def _run(args: argparse.Namespace, extra: list[str]) -> Path | None:
    plan = plan_run(args, extra)
    bench = build_trainer(plan)
    ckpt_path, fit_wall_s = fit_or_load(plan, bench)
    metrics, eval_wall_s = evaluate_model(plan, bench)
    if not bench.trainer.is_global_zero:
        return None
    record, path, grid_path = write_result(plan, bench, metrics, ckpt_path, fit_wall_s, eval_wall_s)
    locations = publish(plan, bench, record, grid_path)
    print(console.summary(record, {"record": path, "samples": grid_path, **locations}))
    return path


@dataclass
class RunPlan:
    """What one invocation does, resolved once from the command line: names, config files, directories."""

    args: argparse.Namespace
    extra: list[str]
    files: list[Path]
    cadence: dict[str, Any]  # ModelCheckpoint's every-N-steps or every-span arguments
    family: str
    run_id: str
    run_dir: Path
    results_dir: Path
    eval_state: dict[str, Any] | None  # the checkpoint to evaluate (eval-only), loaded and checked
    names: Names | None = None

    @property
    def eval_only(self) -> bool:
        return self.args.checkpoint is not None

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.ckpt_dir / "last.ckpt"


@dataclass
class BenchSession:
    """The Lightning objects of a run and the callbacks whose state the record reports."""

    trainer: Any
    model: Any
    dm: Any
    resolved: dict[str, Any]  # the full resolved config, secrets redacted
    eval_cfg: EvalConfig
    logger: Any  # WandbLogger or False
    throughput: TrainThroughput
    provenance: TrainingProvenance
    budget: TrainingBudget
    curve: QualityCurve
    resume_state: dict[str, Any] | None


def plan_run(args: argparse.Namespace, extra: list[str]) -> RunPlan:
    """Stage 1: config files, identity and directories (created and checked writable)."""
    files = config_files(args.configs_dir, args.model, args.data, args.profile, args.class_conditional)
    names = resolve_names(args.model, args.data)
    try:
        cadence = parse_checkpoint_every(args.checkpoint_every)
    except ValueError as err:
        raise BenchError(str(err)) from None
    run_id, run_dir = run_identity(names, args)
    results_dir = args.results_dir
    eval_state = None
    if args.checkpoint is not None:  # eval-only: its own id and directories, never the trained run's
        eval_state = guards.load_checkpoint_checked(args.checkpoint, resuming=False)
        run_id, run_dir, results_dir = guards.eval_identity(run_id, run_dir, results_dir, args.checkpoint)
    for what, d in (("results", results_dir), ("runs", run_dir)):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BenchError(f"cannot create the {what} directory {d} ({err.strerror or err}); pass --{what}-dir "
                             "DIR naming a writable directory") from None
        if not os.access(d, os.W_OK):
            raise BenchError(f"{what} directory {d} is not writable; pass --{what}-dir DIR naming a writable one")
    return RunPlan(args=args, extra=extra, files=files, cadence=cadence, family=names.family, run_id=run_id,
                   run_dir=run_dir, results_dir=results_dir, eval_state=eval_state, names=names)


def checkpoint_hparams(path: Path) -> dict[str, Any]:
    """The model's class path and ``__init__`` arguments saved in a Lightning checkpoint (LightningCLI saves
    them as ``hyper_parameters`` with ``_class_path``), and the datamodule's."""
    state = guards.load_checkpoint(path)
    hp = dict(state.get("hyper_parameters") or {})
    class_path = hp.pop("_class_path", None)
    hp.pop("_instantiator", None)
    for linked in LINKED_FROM_DATA:
        hp.pop(linked, None)
    return {"class_path": class_path, "init_args": hp, "data": dict(state.get("datamodule_hyper_parameters") or {})}


LINKED_FROM_DATA = ("data_shape", "num_levels", "num_classes")


def apply_checkpoint_identity(args: argparse.Namespace) -> None:
    """With ``--checkpoint``: the model (and, unless given, the data) are those the checkpoint was trained with."""
    saved = checkpoint_hparams(args.checkpoint)
    args.checkpoint_model = None
    if saved["class_path"] is not None:
        registered = {target.replace(":", "."): name for name, target in registry.MODELS.items()}
        own = registered.get(saved["class_path"], saved["class_path"])
        if args.model is None:
            args.model = own
        elif resolve_model(args.model)[1:] != resolve_model(own)[1:]:
            raise BenchError(f"--model {args.model} does not match the checkpoint's model {saved['class_path']}; "
                             "drop --model (the checkpoint names its model)")
        args.checkpoint_model = {"class_path": saved["class_path"], "init_args": saved["init_args"]}
        if saved["init_args"].get("class_conditional") and own in registry.model_names():
            args.class_conditional = True  # scored with the conditional protocol (guidance sweep, ...) it was run with
    if args.data is None:
        args.data = saved["data"].get("dataset") or DEFAULT_DATA
    if args.model is None:
        raise BenchError(f"{args.checkpoint} names no model class (not written by genbench/LightningCLI); pass --model")


DEFAULT_DATA = "mnist"


def trainer_args(plan: RunPlan) -> list[str]:
    """The LightningCLI arguments of the run: its config files, then the bench flags, then ``-- ...``."""
    args = plan.args
    cli_args = [f"--config={f}" for f in plan.files]
    if plan.names is not None and plan.names.class_path is not None:
        cli_args.append(f"--model.class_path={plan.names.class_path}")
    if external.is_external(args.data):
        cli_args.append(f"--data.dataset={args.data}")
    if getattr(args, "checkpoint_model", None):  # the checkpoint's own architecture, before any -- override
        cli_args.append("--model=" + json.dumps(args.checkpoint_model))
    cli_args += [
        f"--seed_everything={args.seed}",
        f"--trainer.default_root_dir={plan.run_dir}",
        f"--trainer.devices={args.devices}",
        f"--trainer.num_nodes={args.num_nodes}",
    ]
    if args.accelerator:
        cli_args.append(f"--trainer.accelerator={args.accelerator}")
    if args.precision:
        cli_args.append(f"--trainer.precision={args.precision}")
    cli_args += ["--trainer.enable_progress_bar=false"] if args.no_progress else []
    return cli_args + plan.extra


def build_trainer(plan: RunPlan) -> BenchSession:
    """Stage 2: trainer, model and datamodule with the bench callbacks and loggers; the resolved config is
    checked against the run's own (a resume must train the same thing) and saved beside it."""
    args, run_dir = plan.args, plan.run_dir
    throughput = TrainThroughput()
    provenance = TrainingProvenance()
    callbacks = [
        FiniteLossGuard(plan.ckpt_dir),
        throughput,
        provenance,
        PeriodicCheckpoint(dirpath=plan.ckpt_dir, save_last=True, save_top_k=0, **plan.cadence),
        SampleGrid(run_dir / "samples"),
        LearningRateMonitor(logging_interval="step"),
        GradNormMonitor(),
    ]
    logger = make_logger(plan.run_id, run_dir, group=f"{plan.names.data}-{args.profile}",
                         tags=[plan.family, plan.names.model, plan.names.data, args.profile], enabled=not args.no_wandb,
                         fresh=args.fresh)
    csv_logger = CSVLogger(save_dir=str(run_dir), name="csv")  # a new version per invocation: resumes append
    cli = make_cli(trainer_args(plan), run=False, save_config_callback=None, trainer_defaults={"callbacks": callbacks},
                   trainer_objects={"logger": [lg for lg in (logger, csv_logger) if lg],
                                    "plugins": [AtomicCheckpointIO()]})
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    drop_version_from_progress_bar(trainer)
    resolved = portable_config(yaml.safe_load(cli.parser.dump(cli.config, skip_none=False)), args.output_root)
    provenance.set_config(resolved)
    eval_cfg = EvalConfig(**resolved.get("evaluation", {}))
    guards.check_inception_weights(eval_cfg, dm)
    guards.check_protocol(eval_cfg, model)
    resume_state = None
    if not plan.eval_only and plan.last_ckpt.is_file() and not args.fresh:
        resume_state = guards.load_checkpoint_checked(plan.last_ckpt, resuming=True)
        guards.check_resume_config(run_dir / "config.yaml", resolved, plan.run_id, model.evaluation_hparams)
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
        log_config(logger, resolved, {"model": plan.names.model, "data": plan.names.data, "profile": args.profile,
                                      "seed": args.seed, "run_name": args.run_name})
    return BenchSession(trainer=trainer, model=model, dm=dm, resolved=resolved, eval_cfg=eval_cfg, logger=logger,
                        throughput=throughput, provenance=provenance, budget=budget, curve=curve,
                        resume_state=resume_state)


RUNTIME_TRAINER_KEYS = ("logger", "callbacks", "plugins")  # objects the bench attaches itself; not reloadable


def portable_config(resolved: dict[str, Any], root: Path) -> dict[str, Any]:
    """The resolved config as saved in ``config.yaml`` and the record: secrets redacted, the loggers,
    callbacks and plugins the bench attaches itself left out (jsonargparse cannot serialise those objects,
    and ``genbench fit --config config.yaml`` adds its own), and the run directory relative to the output
    root, so the file reloads with ``genbench fit --config`` from that root."""
    out = redact(resolved)
    trainer = dict(out.get("trainer") or {})
    for key in RUNTIME_TRAINER_KEYS:
        trainer.pop(key, None)
    if trainer.get("default_root_dir"):
        trainer["default_root_dir"] = paths.relative_to_root(trainer["default_root_dir"], root)
    out["trainer"] = trainer
    return out


def fit_or_load(plan: RunPlan, bench: BenchSession) -> tuple[str | None, float]:
    """Stage 3: train (resuming from the run's last checkpoint) or load the checkpoint to evaluate.
    Returns the checkpoint started from and this invocation's wall time."""
    trainer, model, dm = bench.trainer, bench.model, bench.dm
    t0 = time.perf_counter()
    if plan.eval_only:
        # Evaluate a given checkpoint without training: the validation loop starts the strategy (and, under
        # DDP, the other ranks), then every rank runs the distributed-aware evaluation.
        guards.load_weights(model, plan.eval_state, plan.args.checkpoint, plan.names.model)
        restore_callback_states(plan.eval_state, (bench.budget, bench.curve, bench.throughput))  # its training
        bench.provenance.load_from(plan.eval_state)  # the commit and config that trained these weights
        ckpt_path = str(plan.args.checkpoint)
        trainer.validate(model, datamodule=dm, verbose=False)
    else:
        ckpt_path = str(plan.last_ckpt) if bench.resume_state is not None else None
        if ckpt_path and trainer.is_global_zero:
            print(f"genbench: resuming {plan.run_id} from {ckpt_path}")
        guards.fit(trainer, model, dm, ckpt_path, plan.run_id, plan.last_ckpt)
        trainer.save_checkpoint(plan.last_ckpt, weights_only=False)  # full state, so a rerun can resume
    return ckpt_path, time.perf_counter() - t0


def evaluate_model(plan: RunPlan, bench: BenchSession) -> tuple[dict[str, Any], float]:
    """Stage 4: the evaluation protocol on every rank (distributed-aware); returns metrics and wall time."""
    bench.model = bench.model.to(bench.trainer.strategy.root_device)
    bench.model.eval()
    t1 = time.perf_counter()
    metrics = evaluate(bench.model, bench.dm, bench.eval_cfg, trainer=bench.trainer,
                       progress=not plan.args.no_progress, extraction_figure=extraction_figure_path(plan))
    return metrics, time.perf_counter() - t1


def extraction_figure_path(plan: RunPlan) -> Path:
    """Where the extraction suite saves the run's samples above their nearest training images."""
    return plan.results_dir / "extraction" / f"{plan.run_id}.png"


def write_result(plan: RunPlan, bench: BenchSession, metrics: dict[str, Any], ckpt_path: str | None,
                 fit_wall_s: float, eval_wall_s: float) -> tuple[ResultRecord, Path, Path]:
    """Stage 5 (rank 0): the sample grid and the result record; returns the record, its path and the grid's."""
    args, trainer, model, budget = plan.args, bench.trainer, bench.model, bench.budget
    if plan.eval_only:
        steps = int(plan.eval_state.get("global_step", 0))
        stopped_by = STOPPED_BY_BUDGET if budget.spent else "unknown (evaluated from a checkpoint)"
    else:
        steps, stopped_by = int(trainer.global_step), budget.stopped_by(trainer)
    grid_path = plan.results_dir / "samples" / f"{plan.run_id}.png"
    samples = model.sample(64, generator=torch.Generator().manual_seed(args.seed))
    save_sample_grid(samples, grid_path, title=plan.run_id, levels=max(model.num_levels, 2))
    class_grid = save_class_grid(model, plan.results_dir / "class_grids" / f"{plan.run_id}.png", args.seed)
    throughput = bench.throughput
    record = ResultRecord(
        run_id=plan.run_id, model=record_model_name(plan), family=plan.family, dataset=plan.names.data, profile=args.profile,
        seed=args.seed, metrics=metrics, params=model.num_parameters(),
        train={"wall_time_s": throughput.train_seconds, "images": throughput.images,
               "images_per_s": throughput.images_per_s, "fit_wall_s_this_invocation": fit_wall_s,
               "steps": steps, "epochs": trainer.current_epoch,
               "resumed_from": paths.relative_to_root(ckpt_path, args.output_root),
               "precision": str(trainer.precision), "world_size": trainer.world_size,
               "torch_threads": torch.get_num_threads(),
               "checkpoint": "last (no selection by a reported metric)",
               "curves": read_curves(plan.run_dir / "csv"), "quality_curve": bench.curve.points},
        compute={"training": budget.summary(steps, stopped_by), "sampling": sampling_cost(model)},
        evaluation={**bench.eval_cfg.to_dict(), "wall_time_s": eval_wall_s},
        data=bench.dm.describe(), environment=environment(), config=bench.resolved,
        model_info={**model.describe(), "class_path": f"{type(model).__module__}.{type(model).__qualname__}",
                    "run_name": args.run_name},
        artifacts={"sample_grid": os.path.relpath(grid_path, plan.results_dir),
                   **({"extraction_figure": os.path.relpath(extraction_figure_path(plan), plan.results_dir)}
                      if EXTRACTION_RATE in metrics and extraction_figure_path(plan).is_file() else {}),
                   **({"class_grid": os.path.relpath(class_grid, plan.results_dir)} if class_grid else {}),
                   "run_dir": paths.relative_to_root(plan.run_dir, args.output_root)},
    )
    record.train.update(bench.provenance.record_fields())
    path = write_record(record, plan.results_dir)
    print(f"genbench: wrote {path}")
    return record, path, grid_path


def record_model_name(plan: RunPlan) -> str:
    """The model's name in the record and on the leaderboard: ``<model>-cond`` for a class-conditional variant,
    so that its row stands beside (never merges with) the unconditional model's."""
    cond = getattr(plan.args, "class_conditional", False)
    return f"{plan.names.model}-{CONDITIONAL_RUN_NAME}" if cond else plan.names.model


CLASS_GRID_COLUMNS = 10  # samples per class (one row per class) in the class-conditional grid


def save_class_grid(model: Any, path: Path, seed: int) -> Path | None:
    """A class-conditional model's samples, one row per class (``CLASS_GRID_COLUMNS`` each); None for others."""
    if not model.class_conditional or model.is_continuous:
        return None
    labels = torch.arange(model.num_classes).repeat_interleave(CLASS_GRID_COLUMNS)
    samples = model.sample(len(labels), generator=torch.Generator().manual_seed(seed), labels=labels)
    return save_sample_grid(samples, path, levels=max(model.num_levels, 2), nrow=CLASS_GRID_COLUMNS)


def publish(plan: RunPlan, bench: BenchSession, record: ResultRecord, grid_path: Path) -> dict[str, Any]:
    """Stage 6 (rank 0): W&B summary (and checkpoint artifact) and the leaderboard (not for an eval-only
    record). Returns where the leaderboard pages and the W&B run are (for the console summary)."""
    args, logger = plan.args, bench.logger
    locations: dict[str, Any] = {}
    if logger:
        log_final(logger, record, grid_path, plan.results_dir)
        if args.wandb_log_model and not plan.eval_only:
            log_checkpoint(logger, plan.last_ckpt, record)
    if not args.no_leaderboard and not plan.eval_only:
        md, page = build_leaderboard(args.results_dir, args.results_dir.parent)
        locations.update({"leaderboard": page, "markdown": md})
        if logger:
            log_leaderboard(logger, args.results_dir, plan.names.data, args.profile)
    if logger:
        locations["W&B run"] = run_location(logger)
        logger.experiment.finish()
    return locations


def restore_callback_states(checkpoint: dict[str, Any], callbacks: tuple[Any, ...]) -> None:
    """Load ``callbacks``' states from a Lightning checkpoint (keyed by each callback's state key)."""
    states = checkpoint.get("callbacks") or {}
    for cb in callbacks:
        if cb.state_key in states:
            cb.load_state_dict(states[cb.state_key])


CURVE_KEYS = ("train/loss", "val/loss", "val/bpd")


def read_curves(csv_dir: Path, max_points: int = 200) -> dict[str, list[list[float]]]:
    """Training curves from every CSV-logger version of a run (a resumed run adds one), downsampled."""
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


def main(argv: list[str]) -> int:
    console.quiet_known_noise()
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
