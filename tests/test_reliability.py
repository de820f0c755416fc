"""Bad input never yields a valid-looking record: NaN checkpoints, --fresh, changed configs on resume, DDPM
divergence, damaged evaluation caches, records that are not records, and clear errors instead of tracebacks."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from test_fidelity import TinyExtractor, _fake_weights, _random_images
from test_record import make_record

from genbench.bench import guards, leaderboard
from genbench.bench.callbacks import FiniteLossGuard, NonFiniteLossError
from genbench.bench.record import atomic_write_text, load_records, write_record
from genbench.bench.run import BenchError
from genbench.io import DiskFullError, atomic_write
from genbench.metrics import fidelity, inception

FAST_EVAL = ["--evaluation.num_samples=0", "--evaluation.memorization_samples=0", "--evaluation.likelihood_subset=32"]


def bench(tmp: Path, *extra: str, model: str = "vae") -> SimpleNamespace:
    """``python -m genbench bench`` in this process (a subprocess would re-import torch and Lightning for
    every call); returns the exit code and what went to stderr."""
    from genbench.bench.run import main

    argv = ["--model", model, "--profile", "smoke", "--no-progress", "--no-wandb", "--accelerator", "cpu",
            "--devices", "1", "--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs"), *extra]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), torch.random.fork_rng():
        try:
            code = main(argv)
        except SystemExit as exit_:  # jsonargparse's own errors
            code = exit_.code
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained smoke VAE (20 steps): its record, checkpoint and leaderboard."""
    tmp = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = bench(tmp, "--", *FAST_EVAL)
    finally:
        torch.set_num_threads(threads)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp / "runs" / "mnist" / "smoke" / "vae" / "seed0"
    return SimpleNamespace(tmp=tmp, record=tmp / "results" / "mnist-smoke-vae-seed0.json",
                           ckpt=run_dir / "checkpoints" / "last.ckpt", run_dir=run_dir, board=tmp / "leaderboard.md")


def _nan_copy(src: Path, dst: Path) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=True)
    for v in state["state_dict"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    torch.save(state, dst)
    return dst


# ------------------------------------------------------------------------------- 1. NaN / eval-only checkpoint
def test_nan_checkpoint_is_refused_and_eval_only_never_replaces_the_trained_record(trained, tmp_path, one_thread):
    record, board = trained.record.read_bytes(), trained.board.read_bytes()
    nan_ckpt = _nan_copy(trained.ckpt, tmp_path / "nan.ckpt")
    out = bench(trained.tmp, "--checkpoint", str(nan_ckpt), "--", *FAST_EVAL)
    assert out.returncode == 3, out.stderr[-2000:]
    assert str(nan_ckpt) in out.stderr and "non-finite" in out.stderr and "Traceback" not in out.stderr
    assert trained.record.read_bytes() == record and trained.board.read_bytes() == board
    # a good checkpoint evaluated on its own: a record of its own id under results/eval/, nothing else touched
    out = bench(trained.tmp, "--checkpoint", str(trained.ckpt), "--", *FAST_EVAL)
    assert out.returncode == 0, out.stderr[-2000:]
    sha8 = guards.checkpoint_sha8(trained.ckpt)
    (ev,) = load_records(trained.tmp / "results" / "eval")
    assert ev.run_id == f"mnist-smoke-vae-seed0-eval-{sha8}" and ev.train["resumed_from"] == str(trained.ckpt)
    assert 0 < ev.metrics["bpd"]["value"] < 8.5
    assert trained.record.read_bytes() == record and trained.board.read_bytes() == board
    assert [r.run_id for r in load_records(trained.tmp / "results")] == ["mnist-smoke-vae-seed0"]
    assert (trained.run_dir / f"eval-{sha8}" / "config.yaml").is_file()


def test_corrupt_input_checkpoint_of_another_model_is_a_clear_error(trained):
    state = torch.load(trained.ckpt, map_location="cpu", weights_only=True)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(BenchError, match=r"does not fit MODEL gan .*another model or architecture"):
        guards.load_weights(model, state, trained.ckpt, "gan")


# ------------------------------------------------------------------------------- 2. --fresh validates first
def test_fresh_with_a_bad_override_deletes_nothing(trained, one_thread):
    ckpt = trained.ckpt.read_bytes()
    out = bench(trained.tmp, "--fresh", "--", "--model.init_args.nosuch=1")
    assert out.returncode != 0
    assert trained.ckpt.read_bytes() == ckpt
    out = bench(trained.tmp, "--fresh", "--", "--config", str(trained.tmp / "missing.yaml"))
    assert out.returncode == 2 and "missing.yaml" in out.stderr and trained.ckpt.read_bytes() == ckpt
    # a valid --fresh run does start over: the old checkpoint (step 20) is replaced by one of 4 new steps
    out = bench(trained.tmp, "--fresh", "--no-leaderboard", "--", "--trainer.max_steps=4", *FAST_EVAL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.load(trained.ckpt, weights_only=True)["global_step"] == 4
    assert json.loads(trained.record.read_text())["train"]["resumed_from"] is None


# ------------------------------------------------------------------------------- 3. resume under another config
def test_resume_with_changed_hyperparameters_is_refused(trained, one_thread):
    ckpt, record = trained.ckpt.read_bytes(), trained.record.read_bytes()
    out = bench(trained.tmp, "--no-leaderboard", "--", "--trainer.max_steps=60", "--model.init_args.lr=1e6",
                "--model.init_args.latent_dim=4", *FAST_EVAL)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.init_args.lr: 0.001 -> 1000000.0" in out.stderr and "model.init_args.latent_dim: 8 -> 4" in out.stderr
    assert "trainer.max_steps" not in out.stderr and "--fresh" in out.stderr
    assert trained.ckpt.read_bytes() == ckpt and trained.record.read_bytes() == record


def test_a_finished_run_is_re_scored_with_other_sampling_options(trained, one_thread):
    """Sampling/scoring options (the model's evaluation_hparams) may change on a resume: no batch is
    trained, and the record states the options used; the training identity stays that of the checkpoint."""
    # finish the shared run first (an earlier test may have left it short of its budget with --fresh)
    assert bench(trained.tmp, "--no-leaderboard", "--", *FAST_EVAL).returncode == 0
    before = torch.load(trained.ckpt, weights_only=True)
    trained_by = json.loads(trained.record.read_text())["train"]["trained_by"]
    out = bench(trained.tmp, "--no-leaderboard", "--", "--model.init_args.sample_pixels=mode",
                "--model.init_args.iw_samples=2", *FAST_EVAL)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(trained.record.read_text())
    assert record["config"]["model"]["init_args"]["sample_pixels"] == "mode"
    assert record["metrics"]["bpd"]["k"] == 2
    after = torch.load(trained.ckpt, weights_only=True)  # nothing trained: the same step and weights
    assert after["global_step"] == before["global_step"]
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert record["train"]["trained_by"] == trained_by  # re-scoring is no training invocation


def test_resume_config_changes_allow_training_longer_only():
    old = {"trainer": {"max_steps": 20, "devices": "1", "precision": "32-true"}, "model": {"init_args": {"lr": 1e-3}},
           "evaluation": {"num_samples": 16}, "budget": {"train_images": 640}}
    new = {"trainer": {"max_steps": 60, "devices": "2", "precision": "bf16-mixed"},
           "model": {"init_args": {"lr": 1e-3, "beta": 2.0}}, "evaluation": {"num_samples": 0},
           "budget": {"train_images": 1280}}
    assert guards.config_changes(old, new) == [("model.init_args.beta", None, 2.0),
                                               ("trainer.precision", "32-true", "bf16-mixed")]
    # a model's evaluation-only arguments (sampler, temperature...) may change as well; nothing else may
    assert guards.config_changes(old, new, evaluation_hparams=("beta",)) == [
        ("trainer.precision", "32-true", "bf16-mixed")]


# ------------------------------------------------------------------------------- 4. DDPM divergence
def test_nan_model_output_reaches_the_loss_instead_of_raising_in_torch_distributions():
    from genbench.distributions import discretized_gaussian_log_likelihood

    x = torch.zeros(2, 1, 2, 2)
    out = discretized_gaussian_log_likelihood(x, torch.full_like(x, float("nan")), torch.zeros_like(x))
    assert out.shape == x.shape and torch.isnan(out).all()


def test_ddpm_nan_divergence_exits_3_with_the_guard_message(tmp_path, one_thread):
    out = bench(tmp_path, "--no-leaderboard", "--checkpoint-every", "2", "--", "--model.init_args.lr=1e6",
                "--trainer.max_steps=6", *FAST_EVAL, model="ddpm")
    assert out.returncode == 3, out.stderr[-2000:]
    assert "non-finite training loss" in out.stderr and "--fresh" in out.stderr
    assert not list((tmp_path / "results").glob("*.json"))
    ckpt = tmp_path / "runs" / "mnist" / "smoke" / "ddpm" / "seed0" / "checkpoints" / "last.ckpt"
    if ckpt.is_file():  # whatever was written before the divergence holds finite weights only
        assert not guards.non_finite_keys(torch.load(ckpt, weights_only=True)["state_dict"])


class _DivergesInModel(L.LightningModule):
    """Its first update makes the weights NaN; the next step then raises inside the model, as
    torch.distributions does with validated NaN arguments, before any loss reaches backward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        out = self.lin(batch[0])
        if not torch.isfinite(out).all():
            raise ValueError("Expected parameter loc to satisfy the constraint Real(), but found invalid values")
        return out.pow(2).mean()

    def on_before_optimizer_step(self, optimizer):
        self.lin.weight.grad.fill_(float("nan"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_nan_divergence_raised_inside_the_model_is_a_nan_error(tmp_path):
    dm = L.LightningDataModule.from_datasets(train_dataset=torch.utils.data.TensorDataset(torch.randn(16, 4)),
                                             batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(NonFiniteLossError, match=r"training diverged at step 1: non-finite weights in lin.weight"):
        guards.fit(trainer, _DivergesInModel(), dm, None, "x", tmp_path / "last.ckpt")


# ------------------------------------------------------------------------------- 5. evaluation caches
def test_bit_flipped_reference_cache_is_recomputed(tmp_path):
    images, ext = _random_images(20, 1), TinyExtractor()
    kw = {"dataset": "mnist", "split": "test", "start": 0, "extractor": ext, "cache_dir": tmp_path}
    good, path = fidelity.reference_features(images, **kw)
    entry = torch.load(path, weights_only=True)
    entry["features"][3, 5] += 1.0  # one flipped value, the file still loads
    torch.save(entry, path)
    calls = ext.calls
    with pytest.warns(UserWarning, match="damaged or unverifiable; recomputing"):
        again, _ = fidelity.reference_features(images, **kw)
    assert ext.calls > calls and torch.equal(again, good)
    fresh_calls = ext.calls
    third, _ = fidelity.reference_features(images, **kw)  # the rewritten entry verifies and is used
    assert ext.calls == fresh_calls and torch.equal(third, good)


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    for var in (inception.ENV_WEIGHTS,):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    torch_home = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(torch_home))
    monkeypatch.setattr(inception, "find_fid_helper_torchscript", lambda: None)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return tmp_path / "cache" / "weights" / inception.CONVERTED_FILENAME


def test_edited_weights_cache_without_sidecar_is_refused_by_the_pinned_hash(offline_weights):
    _fake_weights(offline_weights, 5.0)  # an edited file whose sidecar was deleted
    assert not offline_weights.with_name(offline_weights.name + ".json").exists()
    with pytest.raises(inception.InceptionWeightsError, match="not the verified conversion.*pinned"):
        inception.resolve_weights(allow_download=False)


def test_truncated_weights_cache_fails_the_bench_before_training(offline_weights):
    _fake_weights(offline_weights)
    data = offline_weights.read_bytes()
    offline_weights.write_bytes(data[: len(data) // 2])
    cfg = SimpleNamespace(sample_metrics=["fid", "kid", "prc"], num_samples=16)
    with pytest.raises(BenchError, match=r"requested sample metrics \(fid, kid, prc\) need Inception weights.*"
                                         r"cannot read"):
        guards.check_inception_weights(cfg, SimpleNamespace(is_continuous=False))
    guards.check_inception_weights(SimpleNamespace(sample_metrics=["domain"], num_samples=16),
                                   SimpleNamespace(is_continuous=False))  # not requested: no error


def test_unusable_weights_cache_fails_evaluate_rather_than_dropping_a_metric(offline_weights):
    from test_contract import smoke_model

    from genbench.bench.config import EvalConfig
    from genbench.bench.evaluate import evaluate
    from genbench.data import GenDataModule

    dm = GenDataModule("digits", batch_size=16, eval_batch_size=32, train_subset=64)
    dm.setup()
    model = smoke_model("vae", dm)
    cfg = EvalConfig(num_samples=8, likelihood_subset=8, memorization_samples=0, sample_metrics=["fid"])
    with pytest.raises(inception.InceptionWeightsError):
        evaluate(model, dm, cfg, progress=False)


def test_leaderboard_flags_fids_whose_cached_extractor_weights_differ(tmp_path):
    a, b = make_record(model="vae", family="vae"), make_record(model="gan", family="gan")
    a.metrics["fid"]["weights_sha256"], b.metrics["fid"]["weights_sha256"] = "1" * 64, "2" * 64
    rows = {r["model"]: r for r in leaderboard.table_rows([a, b])}
    assert "⚠ extractor 11111111" in rows["vae"]["fid"] and "⚠ extractor 22222222" in rows["gan"]["fid"]
    b.metrics["fid"]["weights_sha256"] = "1" * 64
    assert all("⚠" not in r["fid"] for r in leaderboard.table_rows([a, b]))


# ------------------------------------------------------------------------------- 6. NaN last.ckpt
def test_nan_last_checkpoint_is_refused_on_resume_with_what_to_do(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 7}, ckpt)
    with pytest.raises(NonFiniteLossError) as err:
        guards.load_checkpoint_checked(ckpt, resuming=True)
    msg = str(err.value)
    assert str(ckpt) in msg and "cannot resume" in msg and "--fresh" in msg and "last good" not in msg
    guard = FiniteLossGuard(tmp_path)
    assert "is not usable either" in guard._where() and "last good" not in guard._where()
    assert "--fresh" in guard.ADVICE


# ------------------------------------------------------------------------------- 7. a results file that is not a record
@pytest.mark.parametrize("content", ["[]", "3", '"x"', "null", '{"schema_version": 1}'])
def test_corrupt_record_of_valid_json_is_skipped_by_the_leaderboard(tmp_path, content, capsys):
    results = tmp_path / "results"
    write_record(make_record(), results)
    (results / "bad.json").write_text(content)
    assert len(load_records(results)) == 1
    assert "skipping unreadable result record" in capsys.readouterr().out
    leaderboard.build(results, tmp_path)
    assert "| genbench | diffusion | ddpm |" in (tmp_path / "leaderboard.md").read_text()


# ------------------------------------------------------------------------------- 8. clear messages
def test_corrupt_input_bad_seed_is_refused_before_any_directory(tmp_path, one_thread):
    out = bench(tmp_path, "--seed", "-1")
    assert out.returncode == 2 and "SEED -1 is out of range" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_corrupt_input_yaml_error_in_an_extra_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [max_steps: 3\n")
    with pytest.raises(BenchError, match=f"malformed YAML in {bad}"):
        guards.check_extra_configs(["--config", str(bad)])
    with pytest.raises(BenchError, match="must hold a mapping"):
        bad.write_text("- 1\n")
        guards.check_extra_configs([f"--config={bad}"])


def test_corrupt_input_unwritable_leaderboard_directory_fails_before_training(tmp_path, monkeypatch):
    out_dir = tmp_path / "bench"
    out_dir.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out_dir else real_access(p, mode))
    with pytest.raises(BenchError, match=f"leaderboard directory {out_dir} .* is not writable.*--no-leaderboard"):
        guards.check_leaderboard_writable(out_dir / "results")
    guards.check_leaderboard_writable(tmp_path / "other" / "results")  # created later, below a writable dir


def test_corrupt_input_full_disk_names_the_path_and_the_space_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_text(path, "old")

    def full(tmp: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=rf"no space left on the device of {path}: writing it needs about 0.5 MB"):
        atomic_write(path, full, size=500_000)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_interrupted_fit_says_rerun_to_resume(tmp_path):
    class CtrlC:
        interrupted = True

        def fit(self, *a, **k):
            raise SystemExit(1)  # what Lightning does after a KeyboardInterrupt

    last = tmp_path / "last.ckpt"
    last.write_bytes(b"x")
    with pytest.raises(BenchError, match=f"was interrupted; rerun the same command to resume from {last}"):
        guards.fit(CtrlC(), torch.nn.Linear(1, 1), None, None, "run", last)


def test_corrupt_input_too_few_batches_per_rank_for_the_validation_interval(tmp_path):
    dm = L.LightningDataModule.from_datasets(train_dataset=torch.utils.data.TensorDataset(torch.randn(16, 4)),
                                             val_dataset=torch.utils.data.TensorDataset(torch.randn(4, 4)),
                                             batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=10, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(BenchError, match=r"too few training batches per process .*with 1 process.*fewer DEVICES"):
        guards.fit(trainer, _DivergesInModel(), dm, None, "x", tmp_path / "last.ckpt")


def test_no_corrupt_permissions_files_are_created_with_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "r.json", json.dumps({}))
        from genbench.io import atomic_torch_save

        atomic_torch_save({"w": torch.ones(1)}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    for name in ("r.json", "last.ckpt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
