"""What latent diffusion costs against pixel-space DDPM: training and sampling, measured in one process.

Loads the two quick-profile checkpoints of one dataset (``make bench MODEL=ddpm`` and ``make bench MODEL=ldm``
write them under ``runs/<data>/quick/``) and measures, alternating the models ``--reps`` times and keeping the
median (a ratio measured in one run is robust to the machine's load; absolute img/s are not):

* training: the time of one optimizer step (forward, backward, AdamW) on a batch of ``--batch`` training
  images: the pixel DDPM's step, the LDM's autoencoder step (stage 1) and its latent-UNet step (stage 2,
  the frozen encoder included); the LDM's cost per image is the budget-weighted mean of its two stages;
* sampling: images/s of each model's own ``sample`` (its configured sampler and steps), and FLOPs per image
  counted by ``torch.utils.flop_counter`` (``genbench.bench.budget.sampling_cost``).

Also reads the two records (``benchmarks/results/<data>-quick-{ddpm,ldm}-seed0.json``) for training FLOPs
and quality. Writes ``benchmarks/ldm_cost.{json,md}``.

    OMP_NUM_THREADS=1 python benchmarks/ldm_cost.py [--data mnist] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from genbench.bench.budget import sampling_cost
from genbench.data.datamodule import GenDataModule
from genbench.models.ddpm import DDPM
from genbench.models.ldm import LDM

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def load(model_cls: type, data: str, name: str) -> torch.nn.Module:
    ckpt = ROOT / "runs" / data / "quick" / name / "seed0" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise SystemExit(f"ldm_cost: no checkpoint {ckpt}; run `make bench MODEL={name} DATA={data}` first")
    return model_cls.load_from_checkpoint(ckpt, map_location="cpu", weights_only=False)


def step_seconds(model: torch.nn.Module, loss_fn, params: list[torch.nn.Parameter], x: torch.Tensor,
                 y: torch.Tensor) -> float:
    """Wall seconds of one optimizer step on (x, y) (a fresh AdamW: the step's cost, not its value, matters)."""
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss_fn(x, y).backward()
    opt.step()
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--samples", type=int, default=32)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ddpm, ldm = load(DDPM, args.data, "ddpm"), load(LDM, args.data, "ldm")
    dm = GenDataModule(args.data)
    dm.setup()
    x, y = (t[: args.batch] for t in dm.split("train"))

    steps = {
        "ddpm": (ddpm, lambda a, b: ddpm._losses(a, b)["loss"].mean(), list(ddpm.net.parameters())),
        "ldm_autoencoder": (ldm, lambda a, b: ldm._autoencoder_terms(a)["loss"], ldm.autoencoder_parameters()),
        "ldm_latent_unet": (ldm, lambda a, b: ldm._diffusion_terms(ldm._frozen_latents(a))["loss"].mean(),
                            list(ldm.net.parameters())),
    }
    train_s = {k: [] for k in steps}
    sample_s = {"ddpm": [], "ldm": []}
    for _ in range(args.reps):  # alternate, so both models see the same load
        for k, (model, fn, params) in steps.items():
            train_s[k].append(step_seconds(model, fn, params, x, y))
        for k, model in (("ddpm", ddpm), ("ldm", ldm)):
            t0 = time.perf_counter()
            model.sample(args.samples, generator=torch.Generator().manual_seed(0))
            sample_s[k].append(time.perf_counter() - t0)

    records = {k: json.loads((HERE / "results" / f"{args.data}-quick-{k}-seed0.json").read_text())
               for k in ("ddpm", "ldm")}
    stages = records["ldm"]["compute"]["training"]["stages"]
    images = {s: stages[s]["images"] for s in ("autoencoder", "latent_diffusion")}
    step = {k: statistics.median(v) / args.batch for k, v in train_s.items()}  # seconds per training image
    ldm_per_image = (step["ldm_autoencoder"] * images["autoencoder"]
                     + step["ldm_latent_unet"] * images["latent_diffusion"]) / sum(images.values())
    out = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/ldm_cost.py " + " ".join(argv),
        "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
        "data": args.data, "reps": args.reps, "batch": args.batch, "samples": args.samples,
        "train_seconds_per_image": {**step, "ldm_budget_weighted": ldm_per_image},
        "train_time_per_image_ratio_ddpm_over_ldm": step["ddpm"] / ldm_per_image,
        "sample_images_per_s": {k: args.samples / statistics.median(v) for k, v in sample_s.items()},
        "sampling": {"ddpm": sampling_cost(ddpm), "ldm": sampling_cost(ldm)},
        "records": {k: {"train_pflop": r["compute"]["training"]["train_pflop"],
                        "images_seen": r["compute"]["training"]["images_seen"],
                        "train_flops_per_image": r["compute"]["training"]["train_flops_per_image"],
                        "fid": r["metrics"]["fid"]["value"], "bpd": r["metrics"]["bpd"]["value"],
                        "bpd_stderr": r["metrics"]["bpd"].get("stderr"),
                        "domain_fd": (r["metrics"].get("domain_fd") or {}).get("value")}
                    for k, r in records.items()},
    }
    sps = out["sample_images_per_s"]
    out["sample_speed_ratio_ldm_over_ddpm"] = sps["ldm"] / sps["ddpm"]
    out["sample_flops_ratio_ddpm_over_ldm"] = (out["sampling"]["ddpm"]["flops_per_image"]
                                               / out["sampling"]["ldm"]["flops_per_image"])
    (HERE / "ldm_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    rec = out["records"]
    lines = [f"# Latent diffusion against pixel DDPM: cost ({args.data}, quick profile)", "",
             f"Command: `{out['command']}`; {out['machine']}; medians of {args.reps} alternating repetitions.", "",
             "| | pixel DDPM | LDM | ratio |", "|---|---|---|---|",
             f"| training PFLOP (record) | {rec['ddpm']['train_pflop']:.4f} | {rec['ldm']['train_pflop']:.4f} | "
             f"{rec['ddpm']['train_pflop'] / rec['ldm']['train_pflop']:.2f} |",
             f"| training images seen | {rec['ddpm']['images_seen']:,} | {rec['ldm']['images_seen']:,} | "
             f"{rec['ldm']['images_seen'] / rec['ddpm']['images_seen']:.2f}x as many for LDM |",
             f"| training GFLOP per image | {rec['ddpm']['train_flops_per_image'] / 1e9:.3f} | "
             f"{rec['ldm']['train_flops_per_image'] / 1e9:.3f} (budget-weighted) | "
             f"{rec['ddpm']['train_flops_per_image'] / rec['ldm']['train_flops_per_image']:.2f} |",
             f"| training ms per image (measured) | {1e3 * step['ddpm']:.2f} | {1e3 * ldm_per_image:.2f} "
             f"(autoencoder {1e3 * step['ldm_autoencoder']:.2f}, latent UNet {1e3 * step['ldm_latent_unet']:.2f}) | "
             f"{out['train_time_per_image_ratio_ddpm_over_ldm']:.2f} |",
             f"| sampling GFLOP per image | {out['sampling']['ddpm']['flops_per_image'] / 1e9:.3f} | "
             f"{out['sampling']['ldm']['flops_per_image'] / 1e9:.3f} | {out['sample_flops_ratio_ddpm_over_ldm']:.1f} |",
             f"| network evaluations per image | {out['sampling']['ddpm']['network_evaluations_per_image']} | "
             f"{out['sampling']['ldm']['network_evaluations_per_image']} (UNet + 1 decoder) | |",
             f"| sampling images/s (measured) | {sps['ddpm']:.1f} | {sps['ldm']:.1f} | "
             f"{out['sample_speed_ratio_ldm_over_ddpm']:.1f}x faster for LDM |",
             f"| FID@500 vs test | {rec['ddpm']['fid']:.1f} | {rec['ldm']['fid']:.1f} | |",
             f"| bits/dim (bound) | {rec['ddpm']['bpd']:.3f} | {rec['ldm']['bpd']:.3f} | |", ""]
    (HERE / "ldm_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
