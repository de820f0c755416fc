"""``python -m genbench restore``: zero-shot restoration with a trained DDPM checkpoint (DDNM), scored.

Writes one record per task, ``<results>/restoration/<run>-<task>.json`` (operator, sigma_y, sampler, steps,
eta, seed, n, the checkpoint and its training commit, every method's metrics), and a figure
``<results>/restoration/figures/<run>-<task>.png`` (y | A⁺y | DDNM | truth), then prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from genbench import paths
from genbench.data.sources import sha256_file as file_sha256
from genbench.restoration.ddnm import RESTORE_SAMPLERS, check_sampler, network_evaluations, travel_levels
from genbench.restoration.operators import TASKS
from genbench.restoration.run import METHODS, REFERENCE_START, RestorationError, restore_task

RUN_DIR_PATTERN = re.compile(r"(?P<data>[^/]+)/(?P<profile>[^/]+)/(?P<model>[^/]+)/seed(?P<seed>\d+)/checkpoints/[^/]+$")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m genbench restore", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a DDPM checkpoint, e.g. runs/mnist/quick/ddpm/seed0/checkpoints/last.ckpt")
    p.add_argument("--task", default="all", help=f"{' | '.join(TASKS)} | all (default all), or a comma list")
    p.add_argument("--n", type=int, default=100, help="test images restored per task (default 100)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (evenly spaced over T; default 50)")
    p.add_argument("--sampler", default="ddim", help=f"{' | '.join(RESTORE_SAMPLERS)} (default ddim)")
    p.add_argument("--eta", type=float, default=0.85, help="DDIM eta (default 0.85, as DDNM; > 0 for noisy y)")
    p.add_argument("--sigma-y", type=float, default=None,
                   help="measurement noise std in model space [-1, 1] (default: the task's, 0 except denoise 0.2)")
    p.add_argument("--travel-length", type=int, default=0,
                   help="DDNM time-travel: go back up this many steps at every multiple of it (default 0 = off)")
    p.add_argument("--travel-repeat", type=int, default=1, help="how often each time-travel is repeated (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of masks, measurement noise and sampler noise")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"root of benchmarks/ (default: ${paths.HOME_ENV}, else the working directory)")
    p.add_argument("--results-dir", type=Path, default=None, help="default: <output root>/benchmarks/results")
    p.add_argument("--no-leaderboard", action="store_true", help="do not rebuild the leaderboard afterwards")
    args = p.parse_args(argv)
    if args.results_dir is None:
        args.results_dir = paths.results_dir(paths.output_root(args.output_dir))
    return args


def task_list(spec: str) -> list[str]:
    names = list(TASKS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in TASKS]
    if bad or not names:
        raise RestorationError(f"unknown --task {', '.join(bad) or spec!r}; valid: {', '.join(TASKS)}, all")
    return names


def run_name(checkpoint: Path) -> str:
    """``<data>-<profile>-<model>-seed<seed>`` for a bench run's checkpoint, else ``<file stem>-<sha8>``."""
    m = RUN_DIR_PATTERN.search(checkpoint.resolve().as_posix())
    if m:
        return f"{m['data']}-{m['profile']}-{m['model']}-seed{m['seed']}"
    return f"{checkpoint.stem}-{file_sha256(checkpoint)[:8]}"


def load_ddpm(checkpoint: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(DDPM with the checkpoint's weights in eval mode, its datamodule, the checkpoint's provenance)."""
    from genbench.bench.guards import load_checkpoint_checked
    from genbench.bench.run import BenchError
    from genbench.data import GenDataModule
    from genbench.models.ddpm import DDPM

    try:
        state = load_checkpoint_checked(checkpoint, resuming=False)
    except BenchError as err:
        raise RestorationError(str(err)) from None
    hparams = {k: v for k, v in (state.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    class_path = (state.get("hyper_parameters") or {}).get("_class_path", "")
    if not class_path.endswith(".DDPM"):
        raise RestorationError(f"checkpoint {checkpoint} is not a DDPM ({class_path or 'no model class recorded'}); "
                               "restoration needs a diffusion model: pass a checkpoint of `make bench MODEL=ddpm`")
    if hparams.get("class_conditional"):
        raise RestorationError("restoration uses the unconditional prior; this DDPM is class-conditional")
    model = DDPM(**hparams)
    model.load_state_dict(state["state_dict"])
    model.eval()
    dm_hparams = {k: v for k, v in (state.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    datamodule = GenDataModule(dataset=dm_hparams.get("dataset", "mnist"), split_seed=dm_hparams.get("split_seed", 0),
                               val_size=dm_hparams.get("val_size"))
    datamodule.prepare_data()
    datamodule.setup("test")
    provenance = {"path": str(checkpoint), "sha256": file_sha256(checkpoint),
                  "global_step": int(state.get("global_step", 0)),
                  "train_images_seen": ((state.get("callbacks") or {}).get("TrainingBudget") or {}).get("images"),
                  "trained_by": (state.get("genbench_provenance") or {}).get("history", [])}
    return model, datamodule, provenance


def main(argv: list[str]) -> int:
    from genbench.data.sources import DataSourceError

    args = parse_args(argv)
    try:
        return _main(args)
    except (RestorationError, DataSourceError) as err:
        print(f"genbench restore: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from genbench.bench.record import atomic_write_text, environment
    from genbench.metrics.domain import DomainExtractor
    from genbench.restoration.figures import save_restoration_figure
    from genbench.restoration.operators import task

    tasks = task_list(args.task)  # every input is checked before any work
    if not 2 <= args.n <= REFERENCE_START:
        raise RestorationError(f"--n must be in 2..{REFERENCE_START} (the test images after that are the real "
                               f"reference of the domain FD), got {args.n}")
    if args.steps < 1 or args.batch_size < 1:
        raise RestorationError(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    try:
        travel_levels(1, args.travel_length, args.travel_repeat)
    except ValueError as err:
        raise RestorationError(f"--travel-length/--travel-repeat: {err}") from None
    for name in tasks:
        try:
            check_sampler(args.sampler, args.eta, task(name).sigma_y if args.sigma_y is None else args.sigma_y)
        except ValueError as err:
            raise RestorationError(str(err)) from None
    if not args.checkpoint.is_file():
        raise RestorationError(f"checkpoint {args.checkpoint} does not exist; train one with `make bench MODEL=ddpm` "
                               "or pass --checkpoint runs/<data>/<profile>/ddpm/seed<seed>/checkpoints/last.ckpt")
    model, datamodule, provenance = load_ddpm(args.checkpoint)
    extractor = DomainExtractor(datamodule)
    name = run_name(args.checkpoint)
    out_dir = args.results_dir / "restoration"
    steps = min(args.steps, model.diffusion.num_timesteps)
    shared: dict[str, Any] = {}
    rows = []
    for task_name in tasks:
        t0 = time.perf_counter()
        section, images = restore_task(model, datamodule, task_name, args.n, steps, args.sampler, args.eta,
                                       args.sigma_y, args.seed, args.batch_size, extractor, shared,
                                       travel=(args.travel_length, args.travel_repeat))
        record_id = f"{name}-{task_name}"
        figure = save_restoration_figure(images, out_dir / "figures" / f"{record_id}.png", model.num_levels,
                                         title=f"{record_id}: {section['summary']}")
        record = {
            "kind": "restoration", "record_id": record_id, "run": name, "dataset": datamodule.dataset,
            **section,
            "sampler": {"name": args.sampler, "steps": steps, "eta": args.eta if args.sampler == "ddim" else None,
                        "T": model.diffusion.num_timesteps,
                        "network_evaluations": network_evaluations(steps, args.travel_length, args.travel_repeat),
                        "ema": model.hparams.use_ema,
                        "clip_denoised": bool(model.hparams.clip_denoised),
                        "rectification": "DDNM+" if section["sigma_y"] > 0 else "DDNM",
                        "time_travel": ({"length": args.travel_length, "repeat": args.travel_repeat}
                                        if args.travel_length else None)},
            "checkpoint": provenance, "wall_time_s": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(), "environment": environment(),
            "figure": str(figure.relative_to(out_dir)),
        }
        path = out_dir / f"{record_id}.json"
        atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
        print(f"genbench restore: wrote {path}")
        rows.append(record)
    for record in rows:
        cells = "  ".join(f"{m} {record['methods'][m]['psnr_db']:.2f}dB/{record['methods'][m]['domain_fd']:.1f}"
                          for m in METHODS)
        print(f"{record['task']:<12} PSNR/domain-FD: {cells}")
    if not args.no_leaderboard:
        from genbench.bench.leaderboard import build

        outputs = build(args.results_dir, args.results_dir.parent)
        print("genbench restore: leaderboard -> " + ", ".join(str(p) for p in outputs))
    return 0
