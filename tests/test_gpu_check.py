"""benchmarks/gpu_check.py: the prepared GPU check, run here on its CPU path with the smoke profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_reports_throughput_tflops_and_loss(tmp_path):
    out = tmp_path / "check"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--families", "gan", "--images", "64",
           "--profile", "smoke", "--accelerator", "cpu", "--precision", "32-true",
           "--work-dir", str(tmp_path / "runs"), "--out", str(out)]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    (row,) = report["rows"]
    assert row["ok"] and row["model"] == "gan" and row["images"] == 64 and row["precision"] == "32-true"
    assert row["images_per_s"] > 0 and row["train_flops_per_image"] > 0
    assert abs(row["achieved_tflop_per_s"] - row["train_flops_per_image"] * row["images_per_s"] / 1e12) < 1e-12
    assert set(row["loss"]) == {"start", "quarter", "half", "end"}
    assert "CPU" in report["device"]
    table = out.with_suffix(".md").read_text()
    assert "| gan |" in table and "achieved TFLOP/s" in table
    # the GAN has no density: the check says so rather than printing a number
    assert row["bpd"] is None


def test_gpu_check_rejects_a_bad_budget(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--images", "0",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--images must be positive" in proc.stderr
