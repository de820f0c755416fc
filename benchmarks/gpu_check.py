"""A short GPU check of every family's ``paper`` profile: training throughput, achieved TFLOP/s and the loss curve.

Each family trains its paper architecture on MNIST for a fixed number of images (a few minutes on one modern
GPU) with bf16 mixed precision, through the real ``genbench bench`` runner; the evaluation is cut to bits/dim
of 256 test images (no samples, no curve), because the point is the training path on the accelerator. From
each record it prints and writes (``benchmarks/gpu_check.{md,json}``):

* training images/s (``train.images_per_s``: images seen over the fit's wall time, start-up included);
* achieved TFLOP/s = the counted training FLOPs per image (``torch.utils.flop_counter``: matmul, convolution and
  attention, forward + backward) x images/s -- a lower bound on the work done, since elementwise ops are not
  counted;
* the training loss at the start, quarter, half and end of the run, and the bits/dim reached.

    bash benchmarks/gpu_check.sh                          # all four families on the visible GPU
    python benchmarks/gpu_check.py --families ddpm --images 64000

The CPU path (``--accelerator cpu --precision 32-true --profile smoke``) exists to test the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAMILIES = ("ddpm", "gan", "vae", "realnvp")
# Images per family: the same order of work for each (about 1000-5000 optimizer steps of the paper batch sizes).
DEFAULT_IMAGES = {"ddpm": 128_000, "gan": 320_000, "vae": 256_000, "realnvp": 128_000}
EVAL_ONLY_BPD = ["--evaluation.num_samples=0", "--evaluation.memorization_samples=0",
                 "--evaluation.likelihood_subset=256", "--evaluation.curve_points=0",
                 "--evaluation.sampler_steps_sweep=[]"]


def device_name(accelerator: str) -> str:
    if accelerator == "cpu":
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().replace("\n", "; ") or "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown accelerator (nvidia-smi unavailable)"


def run_family(model: str, images: int, args: argparse.Namespace) -> dict:
    out_dir = args.work_dir / model
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", model, "--data", args.data, "--profile", args.profile,
           "--accelerator", args.accelerator, "--devices", "1", "--precision", args.precision,
           "--output-dir", str(out_dir), "--configs-dir", str(ROOT / "configs"), "--fresh",
           "--no-wandb", "--no-leaderboard", "--no-progress",
           "--", f"--budget.train_images={images}", *EVAL_ONLY_BPD]
    t0 = time.perf_counter()
    with open(args.work_dir / f"{model}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_s = time.perf_counter() - t0
    records = sorted((out_dir / "benchmarks").glob("**/results/*.json"))  # smoke runs file under benchmarks/smoke/
    if rc != 0 or not records:
        return {"model": model, "ok": False, "exit_code": rc, "wall_s": wall_s,
                "log": str(args.work_dir / f"{model}.log")}
    return summarize(model, json.loads(records[-1].read_text()), wall_s)


def summarize(model: str, record: dict, wall_s: float) -> dict:
    train, training = record["train"], record["compute"]["training"]
    images_per_s = float(train["images_per_s"])
    flops_per_image = float(training["train_flops_per_image"])
    loss = train.get("curves", {}).get("train/loss") or []
    marks = {}
    if loss:
        for label, frac in (("start", 0.0), ("quarter", 0.25), ("half", 0.5), ("end", 1.0)):
            step, value = loss[min(len(loss) - 1, round(frac * (len(loss) - 1)))]
            marks[label] = {"step": int(step), "loss": float(value)}
    bpd = record["metrics"].get("bpd", {})
    return {"model": model, "ok": True, "images": training["images_seen"], "optimizer_steps": training["optimizer_steps"],
            "precision": train.get("precision"), "params": record.get("params"), "images_per_s": images_per_s,
            "train_flops_per_image": flops_per_image, "achieved_tflop_per_s": flops_per_image * images_per_s / 1e12,
            "loss": marks, "bpd": bpd.get("value"), "bpd_n": bpd.get("n"), "wall_s": wall_s}


def markdown(rows: list[dict], device: str, args: argparse.Namespace) -> str:
    lines = [f"# GPU check ({args.profile} profile, {args.data}, {args.precision})", "",
             f"Device: {device}. Produced by `python benchmarks/gpu_check.py` (via `benchmarks/gpu_check.sh`).", "",
             "| family | params | images | steps | images/s | GFLOP/image | achieved TFLOP/s | loss start → end | bits/dim (n) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['model']} | failed (exit {r['exit_code']}, log {r['log']}) | | | | | | | |")
            continue
        loss = r["loss"]
        trend = f"{loss['start']['loss']:.4g} → {loss['end']['loss']:.4g}" if loss else "—"
        bpd = "—" if r["bpd"] is None else f"{r['bpd']:.3f} ({r['bpd_n']})"
        lines.append(f"| {r['model']} | {r['params']} | {r['images']} | {r['optimizer_steps']} | {r['images_per_s']:.0f} | "
                     f"{r['train_flops_per_image'] / 1e9:.3f} | {r['achieved_tflop_per_s']:.2f} | {trend} | {bpd} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--images", type=int, default=None, help="training images per family (default: per family)")
    p.add_argument("--data", default="mnist")
    p.add_argument("--profile", default="paper")
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--work-dir", type=Path, default=ROOT / "gpu_check_runs")
    p.add_argument("--out", type=Path, default=HERE / "gpu_check", help="writes OUT.md and OUT.json")
    args = p.parse_args(argv)
    if args.images is not None and args.images < 1:
        p.error(f"--images must be positive, got {args.images}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    device = device_name(args.accelerator)
    print(f"device: {device}", flush=True)
    rows = []
    for model in args.families:
        row = run_family(model, args.images or DEFAULT_IMAGES[model], args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps({"device": device, "rows": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, device, args))
    print(markdown(rows, device, args))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
