"""Quick-profile ablations on the validation split: the table behind every tuned choice of the quick configs.

Each setting is a real ``genbench bench`` run (the quick profile, seed 0, its full image budget) in its own
output directory, with the evaluation pointed at the validation split (``--evaluation.reference_split=val
--evaluation.likelihood_split=val``): FID@500 against 500 validation images, bits/dim of the first 1000
validation images and the domain metrics of the same samples. The test split is never looked at here, so a
choice made from this table is not a choice made by the reported metric.

A setting either trains (``overrides`` are LightningCLI arguments on top of the quick config) or re-scores a
trained setting's last checkpoint with other sampling options (``eval_of``: temperature, sampler, decoder
pixels), which changes no weight. Within a group the row with the best value of the group's criterion is
marked *kept*: that is the choice the committed quick config makes.

    OMP_NUM_THREADS=1 python benchmarks/ablations.py --jobs 2            # every setting (hours on 2 cores)
    python benchmarks/ablations.py --only ddpm/base ddpm/min_snr --jobs 2  # some of them
    python benchmarks/ablations.py --report                              # rebuild the table from finished runs

Runs live under ``--work-dir`` (default ``ablation_runs/``); a finished setting is not rerun (its record is
read back), so the table can be built up over several invocations. Output: ``benchmarks/ablations.md`` and
``benchmarks/ablations.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA, PROFILE, SEED = "mnist", "quick", 0
VAL_PROTOCOL = ["--evaluation.reference_split=val", "--evaluation.likelihood_split=val"]
RESCORED_LIKELIHOOD_IMAGES = 8  # re-scored rows: same weights, so bits/dim is the trained row's (not shown)


@dataclass(frozen=True)
class Setting:
    """One row: ``group`` holds rival settings compared by ``criterion`` (a metric key, lower is better)."""

    name: str  # "<group>/<label>"
    model: str
    overrides: tuple[str, ...] = ()
    eval_of: str | None = None  # re-score this setting's checkpoint instead of training
    same_as: str | None = None  # this row is that setting's own evaluation (nothing is run)
    criterion: str = "fid"
    note: str = ""

    @property
    def group(self) -> str:
        return self.name.split("/")[0]


# Each group compares rivals that differ in one respect. A re-scoring group's first row is the trained row
# itself (``same_as``: its own evaluation, not run again). The kept rows form the committed quick configs.
GAN_HINGE_SN = ("--model.init_args.loss=hinge", "--model.init_args.spectral_norm=true", "--model.init_args.d_norm=none",
                "--model.init_args.beta1=0.0", "--model.init_args.beta2=0.9")
SETTINGS: tuple[Setting, ...] = (
    # DDPM: the loss weighting
    Setting("ddpm_train/base", "ddpm", note="eps prediction, hybrid loss, lr 1e-3, batch 64"),
    Setting("ddpm_train/min_snr", "ddpm", ("--model.init_args.min_snr_gamma=5.0",), note="min-SNR-5 weighting"),
    # Latent diffusion: what its samples are made of (the weights are the same)
    Setting("ldm_train/base", "ldm", criterion="bpd", note="the quick LDM (pixel DDPM's training FLOPs)"),
    Setting("ldm_sampler/draw", "ldm", same_as="ldm_train/base", note="pixels drawn from p(x|z)"),
    Setting("ldm_sampler/mode", "ldm", ("--model.init_args.sample_pixels=mode",), eval_of="ldm_train/base",
            note="the decoder's per-pixel mode"),
    # GAN: the loss / normalisation / optimiser recipe
    Setting("gan_train/base", "gan", note="DCGAN, non-saturating loss, BN in D, Adam(0.5, 0.999)"),
    Setting("gan_train/hinge_sn", "gan", GAN_HINGE_SN, note="hinge loss, spectral norm in D (no BN), Adam(0, 0.9)"),
    # VAE: what its samples are made of (the weights are the same)
    Setting("vae_train/base", "vae", criterion="bpd", note="the quick VAE"),
    Setting("vae_sampler/draw", "vae", same_as="vae_train/base", note="pixels drawn from p(x|z)"),
    Setting("vae_sampler/mode", "vae", ("--model.init_args.sample_pixels=mode",), eval_of="vae_train/base",
            note="the decoder's per-pixel mode"),
    # RealNVP: the sampling temperature (the weights are the same)
    Setting("realnvp_train/base", "realnvp", criterion="bpd", note="the quick RealNVP"),
    Setting("realnvp_temperature/T1.0", "realnvp", same_as="realnvp_train/base", note="z ~ N(0, I)"),
    *(Setting(f"realnvp_temperature/T{t}", "realnvp", (f"--model.init_args.temperature={t}",),
              eval_of="realnvp_train/base", note=f"z ~ N(0, {t}^2 I)") for t in ("0.8", "0.7")),
)
BY_NAME = {s.name: s for s in SETTINGS}
REPORTED = ("fid", "bpd", "domain_fd", "precision", "recall", "extraction_rate")


def run_dir(work: Path, s: Setting) -> Path:
    return work / s.name.replace("/", "__")


def checkpoint_of(work: Path, s: Setting) -> Path:
    return run_dir(work, s) / "runs" / DATA / PROFILE / s.model / f"seed{SEED}" / "checkpoints" / "last.ckpt"


def record_path(work: Path, s: Setting) -> Path | None:
    """The setting's result record, if its run finished."""
    if s.same_as is not None:
        return record_path(work, BY_NAME[s.same_as])
    results = run_dir(work, s) / "benchmarks" / "results"
    found = sorted(results.glob("**/*.json")) if results.is_dir() else []
    return found[-1] if found else None


def command(work: Path, s: Setting) -> list[str]:
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", s.model, "--data", DATA, "--profile", PROFILE,
           "--seed", str(SEED), "--output-dir", str(run_dir(work, s)), "--configs-dir", str(ROOT / "configs"),
           "--no-wandb", "--no-leaderboard", "--no-progress"]
    protocol = list(VAL_PROTOCOL)
    if s.eval_of is not None:  # a sampling option leaves the likelihood as it was: score only a token subset
        cmd += ["--checkpoint", str(checkpoint_of(work, BY_NAME[s.eval_of]))]
        protocol.append(f"--evaluation.likelihood_subset={RESCORED_LIKELIHOOD_IMAGES}")
    return [*cmd, "--", *protocol, *s.overrides]


def run(work: Path, s: Setting) -> tuple[str, int, float]:
    if s.same_as is not None or record_path(work, s) is not None:
        return s.name, 0, 0.0
    out = run_dir(work, s)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        rc = subprocess.run(command(work, s), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    return s.name, rc, time.perf_counter() - t0


def _metric(record: dict, key: str) -> float | None:
    m = record.get("metrics", {}).get(key)
    if isinstance(m, dict) and isinstance(m.get("value"), (int, float)):
        return float(m["value"])
    return None


def collect(work: Path) -> list[dict]:
    rows = []
    for s in SETTINGS:
        path = record_path(work, s)
        if path is None:
            continue
        record = json.loads(path.read_text())
        training = record.get("compute", {}).get("training", {})
        rows.append({
            "name": s.name, "group": s.group, "model": s.model, "note": s.note, "criterion": s.criterion,
            "overrides": list(s.overrides), "eval_of": s.eval_of, "same_as": s.same_as,
            "images_seen": training.get("images_seen"), "train_pflop": training.get("train_pflop"),
            "threads": record.get("environment", {}).get("hardware", {}).get("torch_threads"),
            "cpu": record.get("environment", {}).get("hardware", {}).get("cpu_model"),
            **{k: _metric(record, k) for k in REPORTED},
        })
        if s.eval_of is not None:
            rows[-1]["bpd"] = None  # the trained row's value; re-scoring changes sampling only
    for group in {r["group"] for r in rows}:
        members = [r for r in rows if r["group"] == group and r[r["criterion"]] is not None]
        if len(members) > 1:
            best = min(members, key=lambda r: r[r["criterion"]])
            best["kept"] = True
    return rows


def _fmt(v: float | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def report(rows: list[dict]) -> str:
    lines = [
        "# Quick-profile ablations (validation split)",
        "",
        "Produced by `python benchmarks/ablations.py` (see its docstring). MNIST, quick profile, seed 0, each "
        "training setting at the profile's full image budget. Every metric is on the **validation** split "
        "(FID@500 against 500 validation images, bits/dim of the first 1000 validation images, the domain "
        "metrics of the same samples); the reported test metrics were never used to choose. Within a group the "
        "row with the best value of the group's criterion is **kept**; rows re-scored from another row's "
        "checkpoint (*re-scored*) change only how samples are drawn; a row marked *=* is the named row's own evaluation. One run per row: differences of a few FID "
        "units at n=500 are within seed noise.",
        "",
        "| group | setting | what | images seen | train PFLOP | val FID@500 | val bits/dim | val domain FD | "
        "precision | recall | extraction | criterion | kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        what = r["note"] + (f" (re-scored from `{r['eval_of']}`)" if r["eval_of"] else "") + \
            (f" (= `{r['same_as']}`)" if r["same_as"] else "")
        lines.append(
            f"| {r['group']} | `{r['name'].split('/')[1]}` | {what} | {r['images_seen'] or '—'} | "
            f"{_fmt(r['train_pflop'], 4)} | {_fmt(r['fid'], 1)} | {_fmt(r['bpd'], 3)} | {_fmt(r['domain_fd'], 1)} | "
            f"{_fmt(r['precision'], 3)} | {_fmt(r['recall'], 3)} | {_fmt(r['extraction_rate'], 3)} | "
            f"{r['criterion']} | {'**kept**' if r.get('kept') else ''} |")
    done = {r["name"] for r in rows}
    pending = [s.name for s in SETTINGS if s.name not in done]
    if pending:
        lines += ["", f"Not run yet (no record): {', '.join(f'`{p}`' for p in pending)}."]
    hw = sorted({f"{r['cpu']}, {r['threads']} torch thread(s)" for r in rows if r.get("cpu")})
    lines += ["", "Overrides of each row (LightningCLI arguments on top of the quick config):", ""]
    lines += [f"- `{r['name']}`: {' '.join(r['overrides']) or '(none)'}" for r in rows]
    lines += ["", f"Hardware: {'; '.join(hw) or 'not recorded'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="setting names (default: all); 'group/' selects a group")
    p.add_argument("--jobs", type=int, default=1, help="settings run at once (each with OMP_NUM_THREADS=1)")
    p.add_argument("--work-dir", type=Path, default=ROOT / "ablation_runs")
    p.add_argument("--report", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    args = p.parse_args(argv)
    chosen = list(SETTINGS)
    if args.only:
        unknown = [o for o in args.only if o not in BY_NAME and not any(s.name.startswith(o) for s in SETTINGS)]
        if unknown:
            p.error(f"unknown setting(s) {unknown}; valid: {', '.join(BY_NAME)}")
        chosen = [s for s in SETTINGS if any(s.name == o or (o.endswith("/") and s.name.startswith(o)) for o in args.only)]
    if args.dry_run:
        for s in chosen:
            if s.same_as is None:
                print(" ".join(command(args.work_dir, s)))
        return 0
    if not args.report:
        trained = [s for s in chosen if s.eval_of is None and s.same_as is None]
        rescored = [s for s in chosen if s.eval_of is not None]
        failed = []
        for batch in (trained, rescored):  # a re-scored row needs its trained row's checkpoint
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                for name, rc, wall_s in pool.map(lambda s: run(args.work_dir, s), batch):
                    print(f"{name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {wall_s / 60:.1f} min", flush=True)
                    if rc:
                        failed.append(name)
        if failed:
            print(f"failed: {failed}; logs under {args.work_dir}/<setting>/log.txt", file=sys.stderr)
    rows = collect(args.work_dir)
    (HERE / "ablations.json").write_text(json.dumps(rows, indent=1) + "\n")
    (HERE / "ablations.md").write_text(report(rows))
    print(f"wrote {HERE / 'ablations.md'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
