"""Checks that keep bad input from ever producing a valid-looking record.

Every check here runs before the bench deletes, trains or writes anything it would regret: a bad seed, an
unreadable ``--config`` file, a checkpoint with NaN weights or of another model, a resume whose config
differs from the run's, an unwritable leaderboard directory. Failures are :class:`BenchError` (exit 2) or,
for non-finite weights, :class:`NonFiniteCheckpointError` (exit 3), each naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from genbench.bench.callbacks import NonFiniteLossError


class BenchError(RuntimeError):
    """A benchmark cannot start: the message names the problem and the fix."""


MAX_SEED = 2**32 - 1  # numpy's seed range, which seed_everything feeds

# Keys of the resolved config that may change between a run and its resume without changing what is
# trained: how long to train (a resume that trains longer), where and how it runs, what is logged and shown,
# and the evaluation protocol (recorded with the metrics it produced). Everything else is the run's identity.
RESUME_MAY_CHANGE = (
    "budget.train_images", "trainer.max_steps", "trainer.max_epochs", "trainer.max_time", "trainer.min_steps", "trainer.min_epochs",
    "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.logger", "trainer.callbacks",
    "trainer.plugins", "trainer.default_root_dir", "data.num_workers", "data.eval_batch_size", "evaluation",
)


class NonFiniteCheckpointError(NonFiniteLossError):
    """A checkpoint holds NaN/inf weights: it is neither resumed nor evaluated."""


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise BenchError(f"SEED {seed} is out of range: give an integer from 0 to {MAX_SEED}")


def check_extra_configs(extra: list[str]) -> None:
    """Every ``--config FILE`` after ``--`` exists and is valid YAML (jsonargparse's errors do not name it)."""
    files = []
    for i, arg in enumerate(extra):
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(extra):
            files.append(extra[i + 1])
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise BenchError(f"config file {path} (from --config after --) does not exist")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise BenchError(f"cannot read config file {path}: {err}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise BenchError(f"malformed YAML in {path} (from --config after --): {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise BenchError(f"config file {path} must hold a mapping of keys (e.g. `trainer:`), not a "
                             f"{type(loaded).__name__}")


def non_finite_keys(state_dict: dict[str, Any]) -> list[str]:
    return [k for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _keys_text(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def check_checkpoint_finite(path: Path, state: dict[str, Any], resuming: bool) -> None:
    bad = non_finite_keys(state["state_dict"])
    if not bad:
        return
    if resuming:
        raise NonFiniteCheckpointError(
            f"the checkpoint {path} holds non-finite (NaN/inf) weights in {_keys_text(bad)}, so training cannot "
            "resume from it (a rerun would fail the same way). Pass --fresh to delete it and train from scratch, "
            "or replace it with a good checkpoint.")
    raise NonFiniteCheckpointError(
        f"the checkpoint {path} holds non-finite (NaN/inf) weights in {_keys_text(bad)}; it was not evaluated and "
        "no record was written. Evaluate a checkpoint saved before training diverged.")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a clear error for a missing, truncated or corrupted file."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, unsafe types...
        raise BenchError(
            f"checkpoint {path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}); it is "
            "corrupted or truncated, or not a checkpoint. Delete it to train from the previous state, or pass "
            "--fresh to start over."
        ) from err
    if not isinstance(state, dict) or "state_dict" not in state:
        raise BenchError(f"checkpoint {path} has no state_dict; it is not a Lightning checkpoint")
    return state


def load_checkpoint_checked(path: Path, resuming: bool) -> dict[str, Any]:
    """A checkpoint that loads (a clear error otherwise) and holds finite weights only."""
    state = load_checkpoint(path)
    check_checkpoint_finite(path, state, resuming)
    return state


def check_inception_weights(eval_cfg: Any, datamodule: Any) -> None:
    """Requested FID/KID/precision-recall need Inception weights: resolve them before training, not after."""
    from genbench.bench.suites.inception_quality import INCEPTION_METRICS
    from genbench.metrics.inception import InceptionWeightsError, resolve_weights

    wanted = set(INCEPTION_METRICS) & set(eval_cfg.sample_metrics)
    if not wanted or eval_cfg.num_samples <= 0 or datamodule.is_continuous:
        return
    try:
        resolve_weights()
    except InceptionWeightsError as err:
        raise BenchError(f"the requested sample metrics ({', '.join(sorted(wanted))}) need Inception weights: "
                         f"{err}\n(or drop them with -- --evaluation.sample_metrics=[...])") from None


def check_protocol(eval_cfg: Any, model: Any) -> None:
    """The evaluation protocol asks only for suites the model declares it can run: checked before training,
    not after (e.g. a sampler sweep configured for a one-step sampler)."""
    from genbench.bench.evaluate import check_protocol
    from genbench.bench.suites import SuiteConfigError

    try:
        check_protocol(model, eval_cfg)
    except SuiteConfigError as err:
        raise BenchError(str(err)) from None


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: Path, model_name: str) -> None:
    """``model.load_state_dict`` with a clear error for a checkpoint of another model or architecture."""
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3])[:300] if len(lines) > 1 else lines[0][:300] if lines else ""
        raise BenchError(
            f"checkpoint {path} does not fit MODEL {model_name} with this profile and overrides ({detail}); it "
            "is a checkpoint of another model or architecture: pass the --model, --profile and -- overrides it "
            "was trained with") from None


def checkpoint_sha8(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:8]


def eval_identity(run_id: str, run_dir: Path, results_dir: Path, checkpoint: Path) -> tuple[str, Path, Path]:
    """Run id, run directory and results directory of an eval-only ``--checkpoint`` run.

    The id carries the checkpoint's content hash and the record goes to ``<results>/eval/``, which the
    leaderboard does not read: evaluating a checkpoint never replaces the trained run's record or row.
    """
    sha8 = checkpoint_sha8(checkpoint)
    return f"{run_id}-eval-{sha8}", run_dir / f"eval-{sha8}", results_dir / "eval"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)


def config_changes(old: dict[str, Any], new: dict[str, Any], evaluation_hparams: tuple[str, ...] = ()
                   ) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every dotted key whose value differs and that a resume may not change.
    ``evaluation_hparams``: the model's ``__init__`` arguments that only change how it is sampled or scored
    (:attr:`~genbench.models.base.GenerativeModel.evaluation_hparams`), which a resume may change too."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    also = {f"model.init_args.{name}" for name in evaluation_hparams}
    changes = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb and not _may_change(key) and key not in also:
            changes.append((key, None if va is missing else va, None if vb is missing else vb))
    return changes


def check_resume_config(saved_config: Path, resolved: dict[str, Any], run_id: str,
                        evaluation_hparams: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run under a config that differs from the one it was trained with (sampling and
    scoring options of the model, ``evaluation_hparams``, excepted)."""
    if not saved_config.is_file():
        return
    try:
        old = yaml.safe_load(saved_config.read_text())
    except (OSError, yaml.YAMLError):
        old = None
    if not isinstance(old, dict):
        raise BenchError(f"the run's saved config {saved_config} is unreadable, so a resume cannot be checked "
                         "against it: pass --fresh to start over")
    changes = config_changes(old, resolved, evaluation_hparams)
    if changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:8])
        more = f" and {len(changes) - 8} more" if len(changes) > 8 else ""
        raise BenchError(
            f"{run_id} has a checkpoint trained with another config, and resuming would silently keep the old "
            f"values while the record claimed the new ones. Differing keys: {listed}{more}. Pass --fresh to "
            "retrain from scratch with the new config, or pass other --runs-dir and --results-dir directories "
            "to keep both runs.")


def check_fresh_flags(fresh: bool, checkpoint: Path | None) -> None:
    if fresh and checkpoint is not None:
        raise BenchError("--fresh and --checkpoint together: an eval-only run trains nothing, so --fresh would "
                         "only delete the trained run; drop one of them")


def start_fresh(run_dir: Path) -> None:
    """``--fresh``: delete the run's checkpoints, logs and sample grids (called once everything is validated)."""
    for sub in ("checkpoints", "csv", "samples"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    (run_dir / "wandb_id.txt").unlink(missing_ok=True)


def check_leaderboard_writable(results_dir: Path) -> None:
    """The leaderboard (and its lock) live in the results directory's parent: check it before training."""
    import os

    out = Path(results_dir).resolve().parent
    lock = out / ".leaderboard.lock"
    if lock.exists():
        ok = os.access(lock, os.W_OK) and os.access(out, os.W_OK | os.X_OK)
    else:
        existing = out  # it is created with the results directory: its nearest existing ancestor must be writable
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return  # below a file: the results directory itself cannot be made, which its own check reports
        ok = os.access(existing, os.W_OK | os.X_OK)
    if not ok:
        raise BenchError(f"the leaderboard directory {out} (the results directory's parent) is not writable; "
                         "pass --results-dir DIR inside a writable directory, or --no-leaderboard")


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


def fit(trainer: Any, model: Any, datamodule: Any, ckpt_path: str | None, run_id: str, last_ckpt: Path) -> None:
    """``trainer.fit`` with the failures of a diverged or interrupted run turned into clear errors.

    Divergence can surface as an exception from inside the model (e.g. ``torch.distributions`` validating
    a NaN argument) before the loss guard sees a NaN loss; with non-finite weights it is reported as such.
    Lightning answers Ctrl-C with ``SystemExit(1)``; it becomes the "rerun to resume" message.
    """
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except NonFiniteLossError:
        raise
    except (SystemExit, KeyboardInterrupt):
        if trainer.interrupted:
            raise BenchError(_interrupted(run_id, last_ckpt)) from None
        raise
    except Exception as err:
        if isinstance(err, ValueError) and "val_check_interval" in str(err):
            raise BenchError(
                f"too few training batches per process for validation every trainer.val_check_interval steps "
                f"with {trainer.world_size} process(es): {str(err).strip().rstrip('.')}. Use fewer DEVICES, a smaller "
                "data.batch_size or a smaller -- --trainer.val_check_interval") from None
        bad = non_finite_parameters(model)
        if not bad:
            raise
        where = (f"; the last checkpoint on disk is {last_ckpt}, written before the weights diverged"
                 if last_ckpt.is_file() else "; no checkpoint was written yet")
        raise NonFiniteLossError(
            f"training diverged at step {trainer.global_step}: non-finite weights in {_keys_text(bad)} made "
            f"the model fail ({type(err).__name__}: {str(err).splitlines()[0][:160]}){where}. Lower the "
            "learning rate or enable gradient clipping, then rerun (or pass --fresh).") from err
    if trainer.interrupted:
        raise BenchError(_interrupted(run_id, last_ckpt))


def _interrupted(run_id: str, last_ckpt: Path) -> str:
    if last_ckpt.is_file():
        return f"training of {run_id} was interrupted; rerun the same command to resume from {last_ckpt}"
    return f"training of {run_id} was interrupted before its first checkpoint; rerun the same command to start again"
