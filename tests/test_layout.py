"""Package structure: no import cycle between the CLI and the bench runner; outputs go under the working
directory, ``GENBENCH_HOME`` or ``--output-dir``, never under the installed package."""

import os
import subprocess
import sys
from pathlib import Path

from genbench.bench.run import parse_args

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_bench_runner_imports_without_the_cli():
    out = _python("import sys, genbench.bench.run, genbench.bench.guards, genbench.lightning_cli\n"
                  "print(sorted(m for m in sys.modules if m == 'genbench.cli'))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_cli_dispatcher_loads_no_command_until_one_runs():
    out = _python("import sys, genbench.cli\n"
                  "print([m for m in ('lightning', 'torch', 'genbench.bench.run') if m in sys.modules])")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_every_command_target_resolves():
    out = _python("import importlib, genbench.cli as c\n"
                  "for name, cmd in c.COMMANDS.items():\n"
                  "    mod, fn = cmd.target.split(':')\n"
                  "    assert callable(getattr(importlib.import_module(mod), fn)), name\n"
                  "print(len(c.COMMANDS))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "8"  # fit validate test bench score sweep leaderboard restore


def test_output_dirs_default_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("GENBENCH_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENBENCH_CONFIGS", raising=False)
    args, extra = parse_args(["--model", "ddpm", "--", "--trainer.max_steps=3"])
    assert extra == ["--trainer.max_steps=3"]
    assert args.results_dir == tmp_path.resolve() / "benchmarks" / "results"
    assert args.runs_dir == tmp_path.resolve() / "runs"
    assert args.configs_dir == ROOT / "configs"  # the packaged config tree, wherever the command runs
    smoke, _ = parse_args(["--model", "ddpm", "--profile", "smoke"])  # plumbing checks stay out of the leaderboard
    assert smoke.results_dir == tmp_path.resolve() / "benchmarks" / "smoke" / "results"


def test_genbench_home_and_output_dir_move_the_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENBENCH_HOME", str(tmp_path / "home"))
    args, _ = parse_args(["--model", "ddpm"])
    assert args.runs_dir == tmp_path.resolve() / "home" / "runs"
    monkeypatch.setenv("GENBENCH_CONFIGS", str(tmp_path / "my-configs"))
    assert parse_args(["--model", "ddpm"])[0].configs_dir == tmp_path.resolve() / "my-configs"
    args, _ = parse_args(["--model", "ddpm", "--output-dir", str(tmp_path / "out")])  # the flag wins
    assert args.results_dir == tmp_path.resolve() / "out" / "benchmarks" / "results"
    assert args.runs_dir == tmp_path.resolve() / "out" / "runs"
    args, _ = parse_args(["--model", "ddpm", "--output-dir", "out", "--runs-dir", "elsewhere"])  # explicit wins
    assert args.runs_dir == Path("elsewhere")
    assert args.results_dir == tmp_path.resolve() / "out" / "benchmarks" / "results"


def test_bench_writes_under_output_dir_through_the_cli(tmp_path):
    """From a working directory outside the repository, the run directory is made under --output-dir: a
    file in its place makes the bench fail (exit 2) naming that path, before any training."""
    (tmp_path / "out").write_text("a file where the output root should be")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GENBENCH_HOME", None)
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", "gan", "--profile", "smoke", "--no-wandb",
           "--no-progress", "--no-leaderboard", "--configs-dir", str(ROOT / "configs"),
           "--output-dir", str(tmp_path / "out")]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"cannot create the run directory {tmp_path.resolve() / 'out' / 'runs' / 'mnist' / 'smoke'}" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written to the working directory
