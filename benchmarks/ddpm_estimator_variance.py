"""Per-image spread of the DDPM bound's two timestep estimators (``stratified`` vs ``sampled``) at equal K.

    python benchmarks/ddpm_estimator_variance.py                          # train a small DDPM, then measure
    python benchmarks/ddpm_estimator_variance.py --checkpoint runs/mnist/quick/ddpm/seed0/checkpoints/last.ckpt

Without ``--checkpoint`` a DDPM of ``configs/model/ddpm.yaml`` (T = 1000, cosine schedule, hybrid loss,
learned-range variances) is trained for ``--steps`` batches on MNIST: with ``--arch smoke`` (default) the
tiny UNet of ``configs/profile/smoke/ddpm.yaml``, with ``--arch quick`` the quick profile's UNet. Then the bound -log p(x) of each of the first
``--images`` test images is estimated ``--repeats`` times by each estimator (independent Monte Carlo draws:
``likelihood_seed`` = 0, 1, ...; the same K for both), through the model's own ``log_likelihood`` path (EMA
weights, float64). Printed per estimator: the mean bound in bits/dim over the images, and the per-image
standard deviation over repeats (root mean square over images); then sampled / stratified, the ratio the
DDPM estimator's docstring quotes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from genbench.data.datamodule import GenDataModule
from genbench.models.ddpm import DDPM

ROOT = Path(__file__).resolve().parents[1]


def small_ddpm(dm: GenDataModule, arch: str) -> DDPM:
    init = dict(yaml.safe_load((ROOT / "configs" / "model" / "ddpm.yaml").read_text())["model"]["init_args"])
    if arch == "smoke":
        smoke = yaml.safe_load((ROOT / "configs" / "profile" / "smoke" / "ddpm.yaml").read_text())
        init.update(smoke["model"]["init_args"])
    return DDPM(data_shape=dm.data_shape, num_levels=dm.num_levels, num_classes=dm.num_classes, **init)


def load(path: Path) -> DDPM:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = DDPM(**state["hyper_parameters"])
    model.load_state_dict(state["state_dict"])
    return model


def spread(model: DDPM, x: torch.Tensor, estimator: str, k: int, repeats: int) -> dict[str, float]:
    runs = []
    for r in range(repeats):
        model.hparams.likelihood_seed = r
        runs.append(-model._log_likelihood(x, estimator, k))
    nll = torch.stack(runs)  # [repeats, images], nats
    per_image_std = nll.std(0, unbiased=True)
    scale = model.num_dims * math.log(2.0)
    return {"mean_bpd": float(nll.mean() / scale), "rms_per_image_std_bpd": float(per_image_std.pow(2).mean().sqrt() / scale),
            "rms_per_image_std_nats": float(per_image_std.pow(2).mean().sqrt())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a DDPM Lightning checkpoint to measure")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--arch", choices=("smoke", "quick"), default="smoke",
                        help="smoke: configs/model/ddpm.yaml + the smoke profile's tiny UNet; quick: the model file alone")
    parser.add_argument("--steps", type=int, default=500, help="training batches when no checkpoint is given")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=64, help="first test images scored")
    parser.add_argument("--repeats", type=int, default=16, help="independent estimates per image and estimator")
    parser.add_argument("--k", type=int, default=16, help="timesteps per estimate (K), the same for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()

    L.seed_everything(args.seed, verbose=False)
    dm = GenDataModule(args.data, batch_size=args.batch_size)
    dm.prepare_data()
    dm.setup()
    start = time.perf_counter()
    if args.checkpoint is not None:
        model, trained = load(args.checkpoint), f"checkpoint {args.checkpoint}"
    else:
        model = small_ddpm(dm, args.arch)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm)
        overrides = " + profile/smoke overrides" if args.arch == "smoke" else ""
        trained = f"configs/model/ddpm.yaml{overrides}, {args.steps} steps of batch {args.batch_size}"
    train_s = time.perf_counter() - start
    model.eval()
    x = dm.split("test")[0][: args.images]
    start = time.perf_counter()
    result = {est: spread(model, x, est, args.k, args.repeats) for est in ("stratified", "sampled")}
    result.update({
        "ratio_sampled_over_stratified_std": result["sampled"]["rms_per_image_std_nats"]
        / result["stratified"]["rms_per_image_std_nats"],
        "data": args.data, "images": f"test[0:{len(x)}]", "K": args.k, "repeats": args.repeats,
        "T": model.diffusion.num_timesteps, "model": trained, "params": model.num_parameters(),
        "train_s": train_s, "measure_s": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    })
    print(json.dumps(result, indent=2))
    print(f"per-image std, sampled / stratified at K = {args.k}: {result['ratio_sampled_over_stratified_std']:.2f}x")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
