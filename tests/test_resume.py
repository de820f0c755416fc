"""Crash and resume: a run resumed from any checkpoint (mid-epoch, at an epoch's last batch, after a
validation) ends with the same weights as an uninterrupted run, for every family; and a bench killed
with SIGKILL mid-epoch, rerun with the same command, ends where an uninterrupted bench ends."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_contract import MODELS, smoke_model

from genbench.data import GenDataModule
from genbench.data.resume import PositionedLoader, ResumableSampler

ROOT = Path(__file__).resolve().parents[1]
BATCHES_PER_EPOCH = 4
EPOCHS = 3  # 12 batches: crosses two epoch boundaries (after batches 4 and 8)


def _datamodule() -> GenDataModule:
    return GenDataModule("digits", batch_size=16, eval_batch_size=32, train_subset=16 * BATCHES_PER_EPOCH,
                         shuffle_seed=3)


def _trainer(root: Path, callbacks=()) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, deterministic=True, logger=False,
                     val_check_interval=3, limit_val_batches=2, num_sanity_val_steps=0,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                     callbacks=list(callbacks))


def _fit(name: str, root: Path, ckpt_path: Path | None = None, callbacks=()) -> dict[str, torch.Tensor]:
    L.seed_everything(0, verbose=False)
    dm = _datamodule()
    dm.setup()
    model = smoke_model(name, dm)
    trainer = _trainer(root, callbacks)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    assert trainer.current_epoch == EPOCHS
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _checkpoints_by_batch(ckpt_dir: Path) -> list[Path]:
    """Checkpoints written after each batch, in order (a GAN counts several optimizer steps per batch)."""
    return sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: torch.load(p, weights_only=True)["global_step"])


@pytest.mark.parametrize("name", MODELS)
def test_resume_from_any_checkpoint_matches_the_uninterrupted_run(name, tmp_path, one_thread):
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    reference = _fit(name, tmp_path / "a", callbacks=[every])
    ckpts = _checkpoints_by_batch(tmp_path / "ckpt")
    assert len(ckpts) == EPOCHS * BATCHES_PER_EPOCH
    # mid-epoch after a validation (3), the last batch of an epoch (4), the first of the next (5), mid-epoch (7)
    for batch in (3, 4, 5, 7):
        resumed = _fit(name, tmp_path / f"b{batch}", ckpt_path=ckpts[batch - 1])
        assert resumed.keys() == reference.keys()
        diff = [k for k in reference if not torch.equal(reference[k], resumed[k])]
        assert not diff, f"{name} resumed after batch {batch} differs from the uninterrupted run in {diff[:5]}"


def test_training_position_is_in_the_checkpoint(tmp_path, one_thread):
    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    _fit("vae", tmp_path / "a", callbacks=[every])
    positions = {}
    for step in (3, 4, 5):
        state = torch.load(tmp_path / "ckpt" / f"step={step}.ckpt", weights_only=True)  # one step per batch
        (positions[step],) = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        assert "genbench_rng_states" in state
    assert (positions[3]["epoch"], positions[3]["batches"]) == (0, 3)
    assert (positions[4]["epoch"], positions[4]["batches"]) == (1, 0)  # a complete epoch resumes at the next
    assert (positions[5]["epoch"], positions[5]["batches"]) == (1, 1)
    assert positions[3]["world_size"] == 1 and positions[3]["batch_size"] == 16 and positions[3]["seed"] == 3


def test_positioned_loader_resumes_the_same_order():
    ds = torch.utils.data.TensorDataset(torch.arange(40))
    full = PositionedLoader(ds, ResumableSampler(ds, seed=5), batch_size=4, drop_last=True)
    full.sampler.set_epoch(2)
    order = [b[0].tolist() for b in full]
    assert full.position == (2, 10)
    resumed = PositionedLoader(ds, ResumableSampler(ds, seed=5), batch_size=4, drop_last=True)
    resumed.seek(2, 6)
    assert [b[0].tolist() for b in resumed] == order[6:]
    assert resumed.position == (2, 10)
    assert [b[0].tolist() for b in resumed] == order  # the offset applies to one pass only
    resumed.sampler.set_epoch(3)
    assert [b[0].tolist() for b in resumed] != order  # another epoch, another permutation
    with pytest.raises(ValueError, match="cannot resume at batch 11"):
        resumed.seek(2, 11)


def test_ranks_get_disjoint_shares_of_each_epoch():
    ds = torch.utils.data.TensorDataset(torch.arange(41))
    shares = [list(ResumableSampler(ds, num_replicas=2, rank=r, seed=1)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 20
    assert not set(shares[0]) & set(shares[1])
    one = list(ResumableSampler(ds, num_replicas=1, rank=0, seed=1))
    assert sorted(one) == list(range(41)) and one != list(range(41))  # shuffled, every example once


def test_changed_world_size_restarts_the_epoch_with_a_warning():
    dm = _datamodule()
    dm.setup()
    loader = dm.train_dataloader()
    with pytest.warns(UserWarning, match="'world_size': 4.*restarts that epoch"):
        loader.load_state_dict({"epoch": 2, "batches": 3, "world_size": 4, "batch_size": 16, "seed": 3,
                                "num_examples": 64})
    assert loader.position == (2, 0)
    loader.load_state_dict({"epoch": 2, "batches": 3, "world_size": 1, "batch_size": 16, "seed": 3,
                            "num_examples": 64})
    assert loader.position == (2, 3) and len(list(loader)) == BATCHES_PER_EPOCH - 3


# ------------------------------------------------------------------------------------- SIGKILL, real CLI
SIGKILL_STEPS = 48  # three epochs of 16 batches of 32: a budget of 1536 images
def _bench_cmd(tmp: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "genbench", "bench", "--model", model, "--profile", "smoke", "--no-progress",
            "--no-wandb", "--no-leaderboard", "--accelerator", "cpu", "--devices", "1", "--checkpoint-every", "2",
            "--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs"),
            "--", "--trainer.deterministic=true", f"--budget.train_images={SIGKILL_STEPS * 32}",
            "--evaluation.num_samples=0", "--evaluation.memorization_samples=0"]


def test_sigkill_mid_epoch_then_rerun_ends_like_an_uninterrupted_bench(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # uninterrupted
    ref = subprocess.run(_bench_cmd(tmp_path / "ref", "vae"), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    # killed once a mid-epoch checkpoint exists (an epoch is 512 / 32 = 16 batches), then rerun
    crash = tmp_path / "crash"
    ckpt = crash / "runs" / "mnist" / "smoke" / "vae" / "seed0" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_bench_cmd(crash, "vae"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    killed_at = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.is_file():
            step = torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"]
            if 10 <= step < SIGKILL_STEPS and step % 16:  # mid-epoch, and training not yet over
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None, "the bench finished before it could be killed: " + proc.stderr.read()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    print(f"bench killed with SIGKILL after its checkpoint at step {killed_at}")
    assert not (crash / "results").exists() or not list((crash / "results").glob("*.json"))
    rerun = subprocess.run(_bench_cmd(crash, "vae"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming mnist-smoke-vae-seed0" in rerun.stdout
    a = torch.load(tmp_path / "ref" / "runs" / "mnist" / "smoke" / "vae" / "seed0" / "checkpoints" / "last.ckpt",
                   weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["global_step"] == b["global_step"] == SIGKILL_STEPS
    diff = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not diff, f"resumed after SIGKILL at step {killed_at}: weights differ in {diff[:5]}"
    (ra,) = (json.loads(p.read_text()) for p in (tmp_path / "ref" / "results").glob("*.json"))
    (rb,) = (json.loads(p.read_text()) for p in (crash / "results").glob("*.json"))
    assert rb["train"]["resumed_from"] and not ra["train"]["resumed_from"]
    assert ra["metrics"]["bpd"]["value"] == rb["metrics"]["bpd"]["value"]


def test_checkpoint_cadence_is_parsed():
    from datetime import timedelta

    from genbench.bench.checkpointing import parse_checkpoint_every

    assert parse_checkpoint_every("500") == {"every_n_train_steps": 500}
    assert parse_checkpoint_every("90s") == {"train_time_interval": timedelta(seconds=90)}
    assert parse_checkpoint_every("5m") == {"train_time_interval": timedelta(minutes=5)}
    assert parse_checkpoint_every("1h") == {"train_time_interval": timedelta(hours=1)}
    for bad in ("0", "-3", "5x", "m", ""):
        with pytest.raises(ValueError, match="positive number of steps"):
            parse_checkpoint_every(bad)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    from genbench.bench.checkpointing import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 7, "w": torch.ones(3)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        io.save_checkpoint({"global_step": 8, "bad": lambda: None}, path)  # cannot be pickled: dies mid-write
    assert torch.load(path, weights_only=True)["global_step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.parametrize("workers", [0, 2])
def test_random_flips_are_replayed_on_resume_with_or_without_workers(workers):
    def loader():
        dm = GenDataModule("digits", batch_size=16, train_subset=64, hflip=True, shuffle_seed=4, num_workers=workers)
        dm.setup()
        return dm.train_dataloader()

    full = loader()
    full.sampler.set_epoch(1)
    batches = [b[0] for b in full]
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 2, "world_size": 1, "batch_size": 16, "seed": 4,
                             "num_examples": 64})
    again = [b[0] for b in resumed]
    assert len(again) == 2 and all(torch.equal(a, b) for a, b in zip(again, batches[2:], strict=True))
    x = GenDataModule("digits", train_subset=64).split("train")[0]
    ds = full.dataset
    flips = [ds.flipped(i, 1) for i in range(64)]
    assert 16 < sum(flips) < 48  # about half the examples are flipped
    assert [ds.flipped(i, 2) for i in range(64)] != flips  # another epoch, other flips
    assert torch.equal(ds[(5, 1)][0], x[5].flip(-1) if flips[5] else x[5])
