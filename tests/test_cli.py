"""The command line: help, subcommands, and clear errors for unknown names."""

import subprocess
import sys
from pathlib import Path

import pytest

from genbench.bench.run import BenchError, config_files

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "genbench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("fit", "validate", "test", "bench", "leaderboard"):
        assert f"  {cmd}" in out.stdout


def test_fit_help_has_linked_data_and_evaluation_sections():
    out = run_cli("fit", "--help")
    assert out.returncode == 0
    assert "--data.dataset" in out.stdout and "--evaluation.num_samples" in out.stdout


def test_unknown_command_exits_nonzero():
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "valid commands" in out.stderr


@pytest.mark.parametrize(
    "flag,value,expected",
    [("--model", "nope", "unknown MODEL 'nope'; valid:"),
     ("--data", "nope", "unknown DATA 'nope'; valid:"),
     ("--profile", "nope", "unknown PROFILE 'nope'")],
)
def test_bench_unknown_names_list_valid_values(flag, value, expected, tmp_path):
    args = {"--model": "ddpm", "--data": "mnist", "--profile": "smoke"}
    args[flag] = value
    out = run_cli("bench", *[x for kv in args.items() for x in kv], "--results-dir", str(tmp_path / "r"),
                  "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_make_bench_unknown_model_exits_nonzero():
    out = subprocess.run(["make", "--no-print-directory", "bench", "MODEL=nope", "PROFILE=smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "unknown MODEL 'nope'" in out.stderr


def test_malformed_yaml_is_reported(tmp_path):
    configs = tmp_path / "configs"
    for sub in ("trainer", "data", "model", "profile/smoke"):
        (configs / sub).mkdir(parents=True)
    (configs / "trainer" / "default.yaml").write_text("trainer: {}\n")
    (configs / "data" / "mnist.yaml").write_text("data:\n  dataset: mnist\n")
    (configs / "model" / "ddpm.yaml").write_text("model: [unclosed\n")
    (configs / "profile" / "smoke" / "ddpm.yaml").write_text("{}\n")
    with pytest.raises(BenchError, match="malformed YAML"):
        config_files(configs, "ddpm", "mnist", "smoke")
