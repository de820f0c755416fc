"""``genbench sweep FILE``: many benches from one file (models x datasets x seeds), run one after another
here, or as a SLURM job array through ``configs/cluster/slurm.sbatch``; every job writes its record into the
same results directory, and the leaderboard built from it lists them all.

A sweep file (YAML)::

    profile: quick
    models: [ddpm, vae, realnvp, gan]     # registered names or pkg.module.Class paths
    data: [mnist]                         # names, folder:PATH or hf:ID[:COLUMN]
    seeds: [0, 1, 2]
    bench_args: [--no-progress]           # optional: flags for every `genbench bench`
    overrides: []                         # optional: LightningCLI overrides (after --) for every job

Jobs are numbered in the order data, then model, then seed (``--list`` prints them); ``--index I`` runs job I
alone, and a SLURM array task runs job ``$SLURM_ARRAY_TASK_ID``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genbench import paths

KEYS = {"profile", "models", "data", "seeds", "bench_args", "overrides"}


class SweepError(ValueError):
    """A sweep file or option that cannot run (the message names the key and the fix)."""


@dataclass
class Sweep:
    profile: str
    models: list[str]
    data: list[str]
    seeds: list[int]
    bench_args: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def jobs(self) -> list[list[str]]:
        """Every job's ``genbench bench`` arguments, in order (data, then model, then seed)."""
        out = []
        for data, model, seed in itertools.product(self.data, self.models, self.seeds):
            argv = ["--model", model, "--data", data, "--profile", self.profile, "--seed", str(seed), *self.bench_args]
            out.append(argv + (["--", *self.overrides] if self.overrides else []))
        return out


def _list(value, key: str, kind=str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SweepError(f"sweep key {key!r} is empty; list at least one value")
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError):
        raise SweepError(f"sweep key {key!r} must list {kind.__name__} values, got {value!r}") from None


def load_sweep(path: Path, profile: str | None = None, data: list[str] | None = None,
               seeds: list[int] | None = None, models: list[str] | None = None) -> Sweep:
    """Read a sweep file; ``profile``/``data``/``seeds``/``models`` given here replace the file's."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise SweepError(f"cannot read sweep file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise SweepError(f"malformed YAML in sweep file {path}: {err}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"sweep file {path} must be a mapping with keys {sorted(KEYS)}")
    unknown = set(raw) - KEYS
    if unknown:
        raise SweepError(f"sweep file {path}: unknown key(s) {sorted(unknown)}; valid: {sorted(KEYS)}")
    missing = [k for k in ("profile", "models", "data", "seeds") if k not in raw]
    if missing and not (profile and models and data and seeds):
        raise SweepError(f"sweep file {path} lacks {missing}")
    return Sweep(profile=str(profile or raw.get("profile")),
                 models=models or _list(raw.get("models"), "models"),
                 data=data or _list(raw.get("data"), "data"),
                 seeds=seeds or _list(raw.get("seeds"), "seeds", int),
                 bench_args=[str(a) for a in raw.get("bench_args") or []],
                 overrides=[str(o) for o in raw.get("overrides") or []])


def bench_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "genbench", "bench", *argv]


def slurm_command(sweep_file: Path, n_jobs: int, script: Path, extra: list[str]) -> list[str]:
    """The ``sbatch`` call of a job array with one task per job; the script runs ``genbench sweep FILE
    --index $SLURM_ARRAY_TASK_ID``."""
    exports = f"ALL,SWEEP={sweep_file.resolve()}"
    if extra:
        exports += ",SWEEP_ARGS=" + " ".join(shlex.quote(a) for a in extra)
    return ["sbatch", f"--array=0-{n_jobs - 1}", f"--export={exports}", str(script)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="genbench sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="the sweep file (YAML)")
    p.add_argument("--profile", default=None, help="replace the file's profile")
    p.add_argument("--data", nargs="+", default=None, help="replace the file's datasets")
    p.add_argument("--models", nargs="+", default=None, help="replace the file's models")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="replace the file's seeds")
    p.add_argument("--bench-args", default="", help="more flags for every bench, one string (e.g. '--devices 1')")
    p.add_argument("--index", type=int, default=None,
                   help="run job I only (default under a SLURM array: $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--list", action="store_true", help="print the jobs and exit")
    p.add_argument("--slurm", action="store_true", help="submit the sweep as a SLURM job array (sbatch)")
    p.add_argument("--slurm-script", type=Path, default=None,
                   help="the batch script (default: the packaged configs/cluster/slurm.sbatch)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.add_argument("--keep-going", action="store_true", help="run the remaining jobs after one fails")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        sweep = load_sweep(args.file, args.profile, args.data, args.seeds, args.models)
    except SweepError as err:
        print(f"genbench sweep: {err}", file=sys.stderr)
        return 2
    sweep.bench_args += shlex.split(args.bench_args)
    jobs = sweep.jobs()
    if args.list:
        for i, job in enumerate(jobs):
            print(f"{i}\t{shlex.join(job)}")
        return 0
    if args.slurm:
        script = args.slurm_script or paths.packaged_configs_dir() / "cluster" / "slurm.sbatch"
        cmd = slurm_command(args.file, len(jobs), script, shlex.split(args.bench_args))
        print(shlex.join(cmd))
        return 0 if args.dry_run else subprocess.run(cmd).returncode
    index = args.index
    if index is None and os.environ.get("SLURM_ARRAY_TASK_ID", "").isdigit():
        index = int(os.environ["SLURM_ARRAY_TASK_ID"])
    if index is not None:
        if not 0 <= index < len(jobs):
            print(f"genbench sweep: --index {index} is outside the {len(jobs)} jobs (0..{len(jobs) - 1})", file=sys.stderr)
            return 2
        selected = [(index, jobs[index])]
    else:
        selected = list(enumerate(jobs))
    failed = []
    for i, job in selected:
        cmd = bench_command(job)
        print(f"genbench sweep: job {i + 1}/{len(jobs)}: {shlex.join(['genbench', 'bench', *job])}", flush=True)
        if args.dry_run:
            continue
        code = subprocess.run(cmd).returncode
        if code != 0:
            failed.append((i, code))
            if not args.keep_going:
                print(f"genbench sweep: job {i} failed (exit {code}); rerun the sweep to resume it", file=sys.stderr)
                return code
    if failed:
        print(f"genbench sweep: {len(failed)} job(s) failed: {failed}", file=sys.stderr)
        return failed[0][1]
    return 0
