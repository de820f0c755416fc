"""The console: the end-of-bench summary (units, n, bound kind, floor, paths) and `make bench`'s hint."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

from genbench.bench import console
from genbench.metrics import table as T

ROOT = Path(__file__).resolve().parents[1]


def test_console_summary_lists_units_n_bound_floor_and_paths(tmp_path):
    rec = SimpleNamespace(run_id="r", model="vae", family="vae", dataset="mnist", profile="quick", seed=0,
                          metrics={T.BPD: {"value": 1.2, "n": 1000, "kind": "bound", "estimator": "iwae", "K": 64,
                                           "stderr": 0.009, "subset": "test[0:1000]"},
                                   T.FID: {"value": 123.81, "n": 500, "reference_split": "test"},
                                   T.FID_FLOOR: {"value": 20.3, "n": 500, "kid": 0.0009},
                                   T.KID: {"value": 0.1183, "n": 500, "reference_split": "test"},
                                   T.PRECISION: {"value": 0.136, "n": 500}},
                          train={"steps": 3000, "images": 192000, "wall_time_s": 1218.0, "images_per_s": 157.6},
                          compute={"training": {"images_seen": 192000, "train_pflop": 0.0367, "stopped_by": "budget"}})
    text = console.summary(rec, {"record": tmp_path / "r.json", "W&B run": None})
    lines = text.splitlines()
    assert lines[0] == "genbench bench: r — vae (vae) on mnist, profile quick, seed 0"
    bpd = next(line for line in lines if line.strip().startswith("bits/dim ↓"))
    assert "1.200" in bpd and "1000" in bpd and "bound (iwae, K=64); se 0.009; on test[0:1000]" in bpd
    fid = next(line for line in lines if line.strip().startswith("FID ↓"))
    assert "123.8" in fid and "500" in fid and "vs test; real-vs-real floor 20.3 @500" in fid
    assert "real-vs-real floor 0.0009 @500" in next(line for line in lines if line.strip().startswith("KID ↓"))
    assert "fraction" in next(line for line in lines if line.strip().startswith("precision ↑"))
    assert "192000 training images in 1218.0 s (158 img/s), 0.0367 PFLOP; stopped by budget" in text
    assert lines[-1].split() == ["record", str(tmp_path / "r.json")] and "W&B" not in text


def _make_n(*args: str) -> str:
    out = subprocess.run(["make", "-n", "--no-print-directory", "bench", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_bench_points_a_newcomer_at_the_smoke_profile():
    default = _make_n()
    assert "make bench MODEL=ddpm PROFILE=smoke" in default and "--profile quick" in default
    assert "PROFILE=smoke" in _make_n("MODEL=gan") and "--model gan" in _make_n("MODEL=gan")
    chosen = _make_n("PROFILE=quick")
    assert "a first try" not in chosen and "--profile quick" in chosen  # a chosen profile: no hint
