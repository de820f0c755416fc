"""Bring your own model (a class path) and data (a folder): bench, run names, config reload and checkpoint
evaluation through the real command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_external_data import digit_images, write_pngs

from genbench.bench.run import BenchError, resolve_model
from genbench.models.base import GenerativeModel

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
MODEL = "byo_model.PixelHistogram"


def genbench(*args, cwd, timeout=900):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    env.pop("GENBENCH_HOME", None)
    return subprocess.run([sys.executable, "-m", "genbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_family_list_is_open_but_checked():
    class Autoregressive(GenerativeModel):
        family = "autoregressive"

        def sample(self, n, generator=None):
            return torch.zeros(n, 1, 2, 2, dtype=torch.uint8)

        def log_likelihood(self, x):
            return torch.zeros(len(x), dtype=torch.float64)

    assert Autoregressive((1, 2, 2), 256, 0).family == "autoregressive"
    Autoregressive.family = ""
    with pytest.raises(TypeError, match="must name the model's family"):
        Autoregressive((1, 2, 2), 256, 0)


@pytest.mark.parametrize("path,match", [
    ("no_such_pkg.Model", "cannot import module 'no_such_pkg'"),
    ("byo_model.Missing", "has no attribute 'Missing'"),
    ("torch.nn.Linear", "is not a subclass of genbench.models.base.GenerativeModel"),
    ("nope", "unknown MODEL 'nope'"),
])
def test_bad_model_paths_are_named(path, match, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    with pytest.raises(BenchError, match=match):
        resolve_model(path)


def test_contract_test_checks_an_outside_class():
    env = {**os.environ, "GENBENCH_CONTRACT_MODELS": MODEL, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "test_contract.py"),
                          "-k", "PixelHistogram"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "6 passed" in out.stdout


def test_own_model_on_own_folder_bench_reload_and_checkpoint(tmp_path):
    x, y = digit_images(400)
    for label in range(10):
        write_pngs(tmp_path / "digits" / str(label), x[y == label], prefix=f"d{label}_")
    out_dir = tmp_path / "out"
    data = f"folder:{tmp_path / 'digits'}"
    out = genbench("bench", "--model", MODEL, "--data", data, "--profile", "smoke", "--run-name", "t05",
                   "--no-wandb", "--no-progress", "--output-dir", str(out_dir), "--",
                   "--model.init_args.temperature=0.5", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "400 images, shape 1x8x8 (1 channel), 256 levels, 10 classes" in out.stdout
    (path,) = (out_dir / "benchmarks" / "smoke" / "results").glob("*.json")
    rec = json.loads(path.read_text())
    slug = rec["dataset"]
    assert slug.startswith("folder-digits-") and rec["run_id"] == f"{slug}-smoke-pixelhistogram-t05-seed0"
    assert rec["family"] == "independent" and rec["model"] == "pixelhistogram"
    assert rec["model_info"]["class_path"] == MODEL and rec["model_info"]["run_name"] == "t05"
    assert rec["data"]["inferred"]["classes"] == [str(k) for k in range(10)]
    assert rec["config"]["model"]["init_args"]["temperature"] == 0.5
    assert 0 < rec["metrics"]["bpd"]["value"] < 8 and rec["metrics"]["bpd"]["kind"] == "exact"
    run_dir = out_dir / rec["artifacts"]["run_dir"]
    assert rec["artifacts"]["run_dir"] == f"runs/{slug}/smoke/pixelhistogram-t05/seed0"
    config = (run_dir / "config.yaml").read_text()
    assert "Unable to serialize" not in config and "logger" not in yaml.safe_load(config)["trainer"]

    # the saved config reloads as it is with `genbench fit --config`
    refit = genbench("fit", "--config", str(run_dir / "config.yaml"), "--trainer.default_root_dir",
                     str(tmp_path / "refit"), "--trainer.enable_progress_bar=false", cwd=out_dir)
    assert refit.returncode == 0, refit.stderr[-3000:]
    assert list((tmp_path / "refit").rglob("*.ckpt"))

    # --checkpoint alone: model, architecture (temperature 0.5) and data come from the checkpoint
    ev = genbench("bench", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--profile", "smoke",
                  "--no-wandb", "--no-progress", "--output-dir", str(out_dir), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (evp,) = (out_dir / "benchmarks" / "smoke" / "results" / "eval").glob("*.json")
    erec = json.loads(evp.read_text())
    assert erec["config"]["model"]["init_args"]["temperature"] == 0.5 and erec["dataset"] == slug
    assert erec["metrics"]["bpd"]["value"] == pytest.approx(rec["metrics"]["bpd"]["value"], rel=1e-12)
