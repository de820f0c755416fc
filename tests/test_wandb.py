"""W&B: offline without an API key; disabled on request; metrics flattened for the run summary; and what a
bench run sends (read back from the offline run): one clean config, learning rate and gradient norm, the
numeric leaderboard table, line and bar charts, the checkpoint artifact. The console summary too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from wandb_offline import read_offline_run

from genbench.bench import run as bench_run
from genbench.bench.callbacks import GradNormMonitor, VersionlessProgressBar, drop_version_from_progress_bar
from genbench.bench.wandb_utils import flatten_metrics
from genbench.metrics import table as T


def test_offline_without_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert not bench_run.wandb_key_configured()
    logger = bench_run.make_logger("r", tmp_path, group="g", tags=["t"], enabled=True)
    assert logger is not False
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert (tmp_path / "wandb_id.txt").is_file()
    again = (tmp_path / "wandb_id.txt").read_text()
    bench_run.make_logger("r", tmp_path, group="g", tags=["t"], enabled=True)
    assert (tmp_path / "wandb_id.txt").read_text() == again  # a resumed run keeps its W&B id


def test_key_in_environment_means_online(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert bench_run.wandb_key_configured()


def test_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert bench_run.make_logger("r", tmp_path, group="g", tags=[], enabled=True) is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert bench_run.make_logger("r", tmp_path, group="g", tags=[], enabled=False) is False


def test_flatten_metrics():
    flat = flatten_metrics({"fid": {"value": 3.5, "n": 500, "extractor": "x"}, "bpd": {"available": False}})
    assert flat == {"final/fid": 3.5, "final/fid.n": 500}


# ------------------------------------------------------------------ what a bench run holds (read back offline)
ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Unable to serialize", "LightningCLI's args parameter", "litlogger", "LeafSpec", "wandb: WARNING",
         "require('service')")


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    """One smoke DDPM bench (it has a sampler sweep) with the checkpoint artifact, W&B offline."""
    tmp = tmp_path_factory.mktemp("wandb_bench")
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_SILENT", None)  # the bench silences W&B itself
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", "ddpm", "--profile", "smoke", "--no-progress",
           "--output-dir", str(tmp), "--wandb-log-model"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (run,) = (tmp / "runs" / "mnist" / "smoke" / "ddpm" / "seed0" / "wandb").glob("offline-run-*")
    return {"out": out, "run": run, "content": read_offline_run(run), "tmp": tmp}


def test_config_is_logged_once_and_clean(ddpm_run):
    c = ddpm_run["content"]
    written = [k for keys in c["config_updates"] for k in keys if not k.startswith("_wandb")]
    assert sorted(written) == sorted({"bench", "seed_everything", "trainer", "model", "data", "evaluation", "budget",
                                      "optimizer", "lr_scheduler"})  # each section once, no flattened init args
    assert c["config"]["bench"] == {"model": "ddpm", "data": "mnist", "profile": "smoke", "seed": 0,
                                     "run_name": None}
    assert c["config"]["model"]["class_path"] == "genbench.models.ddpm.DDPM"
    assert "Unable to serialize" not in json.dumps(c["config"])
    assert "logger" not in c["config"]["trainer"] and "plugins" not in c["config"]["trainer"]  # attached by the bench, not config


def test_training_logs_learning_rate_grad_norm_and_quality_curve(ddpm_run):
    keys = ddpm_run["content"]["history_keys"]
    assert "lr-AdamW" in keys and "grad_norm/total" in keys and "curve/bpd" in keys and "curve/domain_fd" in keys
    assert "train/images_per_s" in keys
    norms = [row["grad_norm/total"] for row in ddpm_run["content"]["history"] if "grad_norm/total" in row]
    lrs = [row["lr-AdamW"] for row in ddpm_run["content"]["history"] if "lr-AdamW" in row]
    assert norms and all(v > 0 for v in norms) and lrs and all(v > 0 for v in lrs)


def test_leaderboard_table_is_numeric_with_a_column_per_metric(ddpm_run):
    table = ddpm_run["content"]["tables"]["leaderboard"]
    cols = table["columns"]
    assert all(m.key in cols for m in T.leaderboard_metrics()) and "_num" not in cols
    (row,) = [dict(zip(cols, r, strict=True)) for r in table["data"]]
    record = json.loads((ddpm_run["tmp"] / "benchmarks" / "smoke" / "results" / "mnist-smoke-ddpm-seed0.json").read_text())
    assert row["model"] == "ddpm" and row["fid"] == pytest.approx(record["metrics"]["fid"]["value"], rel=1e-12)
    assert row["bpd"] == pytest.approx(record["metrics"]["bpd"]["value"], rel=1e-12)
    assert all(isinstance(row[k], (int, float)) for k in ("fid", "kid", "precision", "params", "train_pflop"))


def test_sweep_curve_and_class_histograms_are_charts(ddpm_run):
    c = ddpm_run["content"]
    record = json.loads((ddpm_run["tmp"] / "benchmarks" / "smoke" / "results" / "mnist-smoke-ddpm-seed0.json").read_text())
    sweep = c["tables"]["sampler_sweep/fid_vs_steps_table"]
    assert sweep["columns"] == ["steps", "fid", "n"]
    assert [(s, f) for s, f, _ in sweep["data"]] == [(s["steps"], s["fid"]) for s in record["metrics"]["fid_vs_steps"]]
    assert c["config"]["_wandb/visualize/sampler_sweep/fid_vs_steps"]["panel_config"]["panelDefId"] == "wandb/line/v0"
    for key in ("bpd", "domain_fd", "class_tv"):
        assert c["config"][f"_wandb/visualize/quality_vs_compute/{key}"]["panel_config"]["panelDefId"] == "wandb/line/v0"
    hist = c["tables"]["class_histogram/samples_table"]
    cov = record["metrics"]["class_coverage"]
    assert [r[1] for r in hist["data"]] == cov["sample_histogram"] and [r[2] for r in hist["data"]] == cov["real_histogram"]
    assert c["config"]["_wandb/visualize/class_histogram/samples"]["panel_config"]["panelDefId"] == "wandb/bar/v0"


def test_checkpoint_artifact_summary_and_images(ddpm_run):
    c = ddpm_run["content"]
    (model,) = [a for a in c["artifacts"] if a["type"] == "model"]
    assert model["name"] == "model-mnist-smoke-ddpm-seed0" and model["files"] == ["last.ckpt"]
    assert model["metadata"]["final/fid"] == pytest.approx(c["summary"]["final/fid"]) and model["metadata"]["steps"] > 0
    assert c["summary"]["final/bpd"] > 0 and c["summary"]["final/params"] > 0
    final = [p for p in c["images"] if p.startswith("files/media/images/final/")]
    assert len(final) == 1
    from PIL import Image

    with Image.open(ddpm_run["run"] / final[0]) as im:
        assert im.size == (8 * 29 + 1, 8 * 29 + 1)  # the pixel-exact grid: 8x8 tiles of 28 px, 1-px padding


def test_console_is_quiet_and_ends_with_the_readable_summary(ddpm_run):
    out = ddpm_run["out"]
    for noise in NOISE:
        assert noise not in out.stderr and noise not in out.stdout, noise
    tail = out.stdout[out.stdout.index("genbench bench: mnist-smoke-ddpm-seed0"):]
    assert "bits/dim ↓" in tail and "bound (stratified, K=4)" in tail and "FID ↓" in tail
    assert "real-vs-real floor" in tail and "fraction" in tail
    for name in ("record", "samples", "leaderboard", "W&B run"):
        line = next(line for line in tail.splitlines() if line.strip().startswith(name))
        assert Path(line.strip()[len(name):].split()[0]).exists(), line
    assert str(ddpm_run["run"]) in tail and "wandb sync" in tail


# ------------------------------------------------------------------------------------------- callbacks
class _TwoPlayers(L.LightningModule):
    """Two optimizers stepped by hand (like the GAN); records each gradient norm it applies."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        self.norms = {0: [], 1: []}

    def training_step(self, batch, batch_idx):
        for i, (net, opt) in enumerate(zip((self.a, self.b), self.optimizers(), strict=True)):
            opt.zero_grad()
            self.manual_backward((net(batch[0]) ** 2).mean() * (i + 1))
            self.norms[i].append(float(torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])))
            opt.step()

    def configure_optimizers(self):
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]


def test_grad_norm_monitor_logs_each_optimizers_norm(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    model = _TwoPlayers()
    data = DataLoader(TensorDataset(torch.randn(12, 3, generator=torch.Generator().manual_seed(0))), batch_size=4)
    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[GradNormMonitor()], log_every_n_steps=1,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, data)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    for i in (0, 1):
        logged = [float(r[f"grad_norm/opt{i}"]) for r in rows if r.get(f"grad_norm/opt{i}")]
        assert logged == pytest.approx(model.norms[i], rel=1e-6) and len(logged) == 3


def test_progress_bar_shows_no_version_number(tmp_path):
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    trainer = L.Trainer(logger=[CSVLogger(tmp_path), CSVLogger(tmp_path, name="b")], enable_checkpointing=False)
    assert "v_num" in TQDMProgressBar().get_metrics(trainer, None)  # Lightning's own bar: "0_0"
    drop_version_from_progress_bar(trainer)
    assert isinstance(trainer.progress_bar_callback, VersionlessProgressBar)
    assert "v_num" not in trainer.progress_bar_callback.get_metrics(trainer, None)
