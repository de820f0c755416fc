"""Budgets in work: training stops at a number of images, FLOPs are counted, the quality curve is recorded,
and the result does not depend on the load of the machine."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from test_record import make_record
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from genbench.bench import leaderboard
from genbench.bench.budget import BudgetConfig, TrainingBudget, count_flops
from genbench.bench.config import EvalConfig
from genbench.bench.record import load_records, write_record

ROOT = Path(__file__).resolve().parents[1]


class _Linear(L.LightningModule):
    """One bias-free linear map: training FLOPs per image are 2*in*out forward + 2*in*out for the weight grad."""

    def __init__(self, d_in: int = 8, d_out: int = 4) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _TwoStage(L.LightningModule):
    """Stage ``a`` (a bias-free 8->4 map, 128 training FLOPs per image) for 3 steps, then stage ``b`` (8->6,
    192 FLOPs per image), named by ``training_stage`` as latent diffusion names its stages."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4, bias=False)
        self.b = nn.Linear(8, 6, bias=False)

    @property
    def training_stage(self) -> str:
        return "a" if self.global_step < 3 else "b"

    def training_step(self, batch, batch_idx):
        return getattr(self, self.training_stage)(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, budget: TrainingBudget, ckpt_path=None, module=None, **trainer_kwargs):
    data = DataLoader(TensorDataset(torch.randn(20, 8)), batch_size=5, drop_last=True)  # epochs of 4 batches
    trainer = L.Trainer(accelerator="cpu", max_epochs=-1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[budget], default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(_Linear() if module is None else module, data, ckpt_path=ckpt_path)
    return trainer


def test_budget_config_rejects_bad_values():
    with pytest.raises(ValueError, match="budget.train_images"):
        BudgetConfig(train_images=0)
    assert BudgetConfig(train_images=None).train_images is None
    with pytest.raises(ValueError, match="curve_first_point"):
        EvalConfig(curve_first_point=0.0)
    with pytest.raises(ValueError, match="curve_likelihood_images"):
        EvalConfig(curve_likelihood_images=0)


def test_curve_points_are_log_spaced_and_end_at_the_budget():
    points = EvalConfig(curve_points=5, curve_first_point=0.01).curve_images(96000)
    assert points == [960, 3036, 9600, 30358, 96000]
    ratios = [b / a for a, b in zip(points, points[1:], strict=False)]
    assert max(ratios) / min(ratios) < 1.001  # equal steps on a log scale
    assert EvalConfig(curve_points=1).curve_images(500) == [500]
    assert EvalConfig(curve_points=0).curve_images(500) == []
    assert EvalConfig(curve_points=4, curve_first_point=0.001).curve_images(10) == [1, 10]  # distinct only


def test_flop_counter_matches_the_closed_form_of_a_linear_layer():
    lin = nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8)
    _, flops = count_flops(lambda: lin(x).sum().backward())
    assert flops == 2 * 5 * 8 * 4 * 2  # forward mm + weight-gradient mm (the input needs no gradient)


def test_budget_stops_exactly_and_a_spent_run_trains_no_further_batch(tmp_path):
    budget = TrainingBudget(train_images=35)  # 7 batches of 5: stops mid-epoch (epochs of 4)
    trainer = _fit(tmp_path, budget)
    assert trainer.global_step == 7 and budget.images == 35 and budget.batches == 7
    assert budget.stopped_by(trainer) == "budget"
    summary = budget.summary(trainer.global_step, budget.stopped_by(trainer))
    assert summary["truncated"] is False and summary["images_seen"] == 35
    assert budget.flops_per_image == 2 * 8 * 4 * 2  # per image of one training batch, counted once
    assert summary["train_flops_total"] == 35 * 128 and summary["train_pflop"] == pytest.approx(35 * 128 / 1e15)
    assert "stages" not in summary and "stages" not in budget.state_dict()  # single-stage records as before
    ckpt = tmp_path / "spent.ckpt"
    trainer.save_checkpoint(ckpt)

    again = TrainingBudget(train_images=35)
    resumed = _fit(tmp_path, again, ckpt_path=str(ckpt))
    assert resumed.global_step == 7 and again.images == 35 and again.batches == 7

    longer = TrainingBudget(train_images=50)  # a larger budget goes on from where the run stopped
    extended = _fit(tmp_path, longer, ckpt_path=str(ckpt))
    assert extended.global_step == 10 and longer.images == 50


def test_a_staged_model_is_counted_per_stage_and_resumes_its_counts(tmp_path):
    budget = TrainingBudget(train_images=35)  # 3 batches of stage a, then 4 of stage b
    trainer = _fit(tmp_path, budget, module=_TwoStage())
    summary = budget.summary(trainer.global_step, budget.stopped_by(trainer))
    assert summary["stages"] == {"a": {"images": 15, "flops_per_image": 128.0, "flops": 15 * 128.0},
                                 "b": {"images": 20, "flops_per_image": 192.0, "flops": 20 * 192.0}}
    total = 15 * 128 + 20 * 192  # the switch changes the FLOPs per image; the stages add up
    assert summary["train_flops_total"] == total and summary["images_seen"] == 35
    assert summary["train_flops_per_image"] == pytest.approx(total / 35)  # the average over the images seen
    again = TrainingBudget(train_images=35)
    again.load_state_dict(budget.state_dict())
    assert again.summary(7, "budget") == budget.summary(7, "budget")

    ckpt = tmp_path / "staged.ckpt"
    trainer.save_checkpoint(ckpt)
    longer = TrainingBudget(train_images=50)  # resumed in stage b: counted on, not measured again
    _fit(tmp_path, longer, ckpt_path=str(ckpt), module=_TwoStage())
    assert longer.stages == {"a": {"images": 15, "flops_per_image": 128.0},
                             "b": {"images": 35, "flops_per_image": 192.0}}
    assert longer.train_flops == 15 * 128 + 35 * 192


@pytest.mark.parametrize("limit, reason", [({"max_steps": 3}, "max_steps"), ({"max_time": {"seconds": 0}}, "max_time")])
def test_a_run_that_stops_before_its_budget_is_truncated(tmp_path, limit, reason):
    budget = TrainingBudget(train_images=35)
    trainer = _fit(tmp_path, budget, **limit)
    assert budget.images < 35
    assert budget.stopped_by(trainer) == reason
    assert budget.summary(trainer.global_step, reason)["truncated"] is True


def _with_compute(rec, pflop, truncated=False, stopped_by="budget"):
    rec.compute = {"training": {"train_pflop": pflop, "images_seen": 96000, "budget_train_images": 96000,
                                "train_flops_per_image": pflop * 1e15 / 96000, "truncated": truncated,
                                "stopped_by": stopped_by},
                   "sampling": {"flops_per_image": 2e9, "network_evaluations_per_image": 50}}
    rec.train["quality_curve"] = [{"images_seen": n, "train_flops": pflop * 1e15 * n / 96000, "bpd": 2.0 - n / 1e5,
                                   "domain_fd": 100.0 - n / 1e3, "class_tv": 0.3, "n_samples": 256,
                                   "n_likelihood": 256} for n in (960, 9600, 96000)]
    return rec


def test_leaderboard_shows_compute_flags_truncated_runs_and_plots_quality_against_compute(tmp_path):
    res = tmp_path / "results"
    write_record(_with_compute(make_record(bpd=1.5, fid=50.0), 1.25), res)
    write_record(_with_compute(make_record(model="vae", family="vae", bpd=1.2, fid=80.0), 0.5, True, "max_time"), res)
    write_record(_with_compute(make_record(model="realnvp", family="flow", bpd=1.8, fid=90.0), 0.5), res)
    md, page = leaderboard.build(res, tmp_path)
    text = md.read_text()
    assert "train PFLOP" in text.splitlines()[6]
    ddpm_row = next(line for line in text.splitlines() if "| ddpm |" in line)
    vae_row = next(line for line in text.splitlines() if "| vae ⚠ truncated (max_time) |" in line)
    assert "| 1.25 (96k img) |" in ddpm_row
    assert "**" not in vae_row, "a truncated run is never marked best"
    assert "**1.500" in ddpm_row  # the best bits/dim among the complete runs
    assert "ddpm: 96000 training images of a 96000 budget, 13 GFLOP/image; sampling 2 GFLOP/image " \
           "(50 network evaluations)" in text
    assert "Quality against training compute (training PFLOP" in page.read_text() and "-quality_vs_compute'><img" in page.read_text()


def _bench(tmp: Path, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", "vae", "--profile", "smoke", "--no-progress",
           "--no-wandb", "--no-leaderboard", "--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs"),
           "--", "--trainer.deterministic=true", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def _comparable(record) -> dict:
    """What a run computes, without what only measures the machine (wall times, speeds)."""
    def timing(key: str) -> bool:  # the harness's names for machine measurements: *wall_s, *_per_s
        return key.endswith(("wall_s", "_per_s"))

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not timing(k)}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip({"metrics": record.metrics, "compute": record.compute, "curve": record.train["quality_curve"],
                  "steps": record.train["steps"], "images": record.train["images"]})


def _weights(tmp: Path) -> dict[str, torch.Tensor]:
    ckpt = tmp / "runs" / "mnist" / "smoke" / "vae" / "seed0" / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_same_seed_same_result_on_a_loaded_and_an_idle_machine(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    idle = _bench(tmp_path / "idle", env=env)
    assert idle.returncode == 0, idle.stderr[-3000:]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        loaded = _bench(tmp_path / "loaded", env=env)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    no_curve = _bench(tmp_path / "no_curve", "--evaluation.curve_points=0", env=env)
    assert no_curve.returncode == 0, no_curve.stderr[-3000:]

    (a,), (b,) = load_records(tmp_path / "idle" / "results"), load_records(tmp_path / "loaded" / "results")
    assert _comparable(a) == _comparable(b)
    assert a.compute["training"]["stopped_by"] == "budget" and a.compute["training"]["images_seen"] == 640
    assert [p["point_images"] for p in a.train["quality_curve"]] == EvalConfig(curve_points=2).curve_images(640)
    assert all(p["bpd"] > 0 and p["domain_fd"] > 0 for p in a.train["quality_curve"])
    wa, wb, wc = _weights(tmp_path / "idle"), _weights(tmp_path / "loaded"), _weights(tmp_path / "no_curve")
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "the machine's load changed the weights"
    assert all(torch.equal(wa[k], wc[k]) for k in wa), "the quality curve changed the training"
