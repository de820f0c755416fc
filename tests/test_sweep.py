"""Sweep files (models x datasets x seeds): expansion, local runs, and the SLURM job array (dry runs)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genbench.sweep import SweepError, load_sweep

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(tmp_path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def genbench(*args, cwd, env=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "genbench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_jobs_are_the_product_in_a_fixed_order(tmp_path):
    s = load_sweep(sweep_file(tmp_path, "profile: smoke\nmodels: [gan, vae]\ndata: [mnist, digits]\nseeds: [0, 1, 2]\n"
                                        "bench_args: [--no-wandb]\noverrides: [--trainer.max_steps=5]\n"))
    jobs = s.jobs()
    assert len(jobs) == 12
    assert jobs[0] == ["--model", "gan", "--data", "mnist", "--profile", "smoke", "--seed", "0", "--no-wandb", "--",
                       "--trainer.max_steps=5"]
    assert jobs[1][:8] == ["--model", "gan", "--data", "mnist", "--profile", "smoke", "--seed", "1"]
    assert jobs[6][:4] == ["--model", "gan", "--data", "digits"]
    narrowed = load_sweep(tmp_path / "sweep.yaml", profile="quick", data=["mnist"], seeds=[7])
    assert [j[:8] for j in narrowed.jobs()] == [["--model", m, "--data", "mnist", "--profile", "quick", "--seed", "7"]
                                                for m in ("gan", "vae")]


@pytest.mark.parametrize("text,match", [
    ("profile: smoke\nmodels: [gan]\ndata: [mnist]\nseed: [0]\n", r"unknown key\(s\) \['seed'\]"),
    ("profile: smoke\nmodels: [gan]\ndata: [mnist]\n", r"lacks \['seeds'\]"),
    ("profile: smoke\nmodels: []\ndata: [mnist]\nseeds: [0]\n", "'models' is empty"),
    ("profile: smoke\nmodels: [gan]\ndata: [mnist]\nseeds: [zero]\n", "'seeds' must list int"),
    ("[gan, vae]\n", "must be a mapping"),
])
def test_bad_sweep_files_are_named(tmp_path, text, match):
    with pytest.raises(SweepError, match=match):
        load_sweep(sweep_file(tmp_path, text))


def test_shipped_sweeps_expand():
    assert len(load_sweep(ROOT / "configs" / "sweeps" / "seeds.yaml").jobs()) == 24
    assert [j[1] for j in load_sweep(ROOT / "configs" / "sweeps" / "families.yaml").jobs()] == ["ddpm", "vae",
                                                                                                 "realnvp", "gan",
                                                                                                 "ldm"]


def test_slurm_array_dry_run_submits_one_task_per_job(tmp_path):
    path = sweep_file(tmp_path, "profile: smoke\nmodels: [gan, vae]\ndata: [mnist]\nseeds: [0, 1]\n")
    out = genbench("sweep", str(path), "--slurm", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("sbatch --array=0-3 ") and f"--export=ALL,SWEEP={path.resolve()}" in line
    assert line.endswith("configs/cluster/slurm.sbatch")


def test_the_batch_script_runs_its_array_task(tmp_path):
    """slurm.sbatch under a fake srun: array task 2 runs job 2 of the sweep with the GPU flags."""
    path = sweep_file(tmp_path, "profile: smoke\nmodels: [gan, vae]\ndata: [mnist]\nseeds: [0, 1]\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@" --dry-run\n')  # run the task's command, as a dry run
    (bin_dir / "srun").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable, "SWEEP": str(path),
           "SLURM_ARRAY_TASK_ID": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2"}
    out = subprocess.run(["bash", str(ROOT / "configs" / "cluster" / "slurm.sbatch")], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("job 3/4: genbench bench --model vae --data mnist --profile smoke --seed 0 --accelerator gpu "
            "--devices 4 --num-nodes 2 --precision bf16-mixed") in out.stdout


def test_a_failing_job_stops_the_sweep_unless_told_to_go_on(tmp_path):
    path = sweep_file(tmp_path, "profile: smoke\nmodels: [nope, gan]\ndata: [mnist]\nseeds: [0]\n")
    out = genbench("sweep", str(path), "--bench-args", f"--output-dir {tmp_path / 'o'} --no-wandb", cwd=tmp_path)
    assert out.returncode == 2 and "job 0 failed (exit 2)" in out.stderr and "job 2/2" not in out.stdout
    out = genbench("sweep", str(path), "--models", "nope", "also_nope", "--keep-going", cwd=tmp_path)
    assert out.returncode == 2 and "2 job(s) failed" in out.stderr


@pytest.mark.slow
def test_a_local_sweep_gathers_its_seeds_into_one_leaderboard(tmp_path):
    path = sweep_file(tmp_path, "profile: smoke\nmodels: [gan]\ndata: [mnist]\nseeds: [0, 1]\n"
                                "bench_args: [--no-wandb, --no-progress]\n")
    out = genbench("sweep", str(path), "--bench-args", f"--output-dir {tmp_path / 'o'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = tmp_path / "o" / "benchmarks" / "smoke" / "results"
    assert sorted(p.name for p in results.glob("*.json")) == ["mnist-smoke-gan-seed0.json", "mnist-smoke-gan-seed1.json"]
    board = (tmp_path / "o" / "benchmarks" / "smoke" / "leaderboard.md").read_text()
    row = next(line for line in board.splitlines() if line.startswith("| genbench | gan | gan |"))
    assert row.rstrip().endswith("| 2 |")  # one row, two seeds
