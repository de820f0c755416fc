"""Positive control of the extraction suite: does it fire on models that copy their training data?

1. Planted control: "models" whose samples are training images, and noisy copies of them (Gaussian noise,
   std ``--noise`` grey levels), must be flagged at close to 100 %; held-out test images near the target
   false-positive rate.
2. Trained control: each family (smoke-sized nets, ``configs/profile/smoke``) is trained through the real
   bench CLI on training subsets of ``--subsets`` images and on the whole training split, all at the same
   budget of ``--budget-images`` images seen, and evaluated by the bench (its ``extraction_rate`` entry).
   A model fitted to 32 images sees each of them ``budget / 32`` times and should copy them; on the full
   data it should not.

Writes ``benchmarks/extraction_control.{json,md,png}`` and ``benchmarks/extraction_flagged.png`` (flagged
samples above their nearest training images). Run: ``OMP_NUM_THREADS=1 python benchmarks/extraction_control.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from genbench.data.datamodule import GenDataModule
from genbench.metrics.extraction import EXTRACTION_RATE, extraction_suite, save_flagged_figure

OUT = Path(__file__).resolve().parent


def planted(dm: GenDataModule, n: int, noise: float) -> dict:
    g = torch.Generator().manual_seed(0)
    train = dm.split("train")[0]
    copies = train[torch.randperm(len(train), generator=g)[:n]]
    noisy = (copies.float() + noise * torch.randn(copies.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
    test = dm.split("test")[0][:n]
    out = {}
    for name, s in (("training images", copies), (f"noisy copies (std {noise:g} levels)", noisy), ("test images", test)):
        t0 = time.perf_counter()
        entry = extraction_suite(s, dm, keep_arrays=True)[EXTRACTION_RATE]
        seconds = time.perf_counter() - t0
        out[name] = {"extraction_rate": entry["value"], "domain_rate": entry["domain"]["value"],
                     "threshold": entry["threshold"], "heldout_flagged_rate": entry["heldout_flagged_rate"],
                     "n": entry["n"], "k": entry["k"], "n_reference": entry["n_reference"],
                     "pixel_nn_seconds": entry["nn_wall_s"], "suite_seconds": seconds}
        if name.startswith("noisy"):
            save_flagged_figure(s, train, entry, OUT / "extraction_flagged.png", title="planted noisy copies")
    return out


def trained(families: list[str], subsets: list[int | None], budget: int, n_samples: int, work: Path,
            result: dict) -> list[dict]:
    from genbench.bench import run as bench_run

    rows = []
    for family in families:
        for subset in subsets:
            tag = f"{family}-{subset or 'full'}"
            argv = ["--model", family, "--profile", "smoke", "--no-wandb", "--no-leaderboard", "--no-progress",
                    "--fresh", "--results-dir", str(work / tag / "res"), "--runs-dir", str(work / tag / "runs"), "--",
                    f"--data.train_subset={'null' if subset is None else subset}", f"--budget.train_images={budget}",
                    "--evaluation.sample_metrics=[domain]", "--evaluation.num_samples=0",
                    f"--evaluation.memorization_samples={n_samples}", "--evaluation.curve_points=0",
                    "--evaluation.sampler_steps_sweep=[]", "--trainer.limit_val_batches=0"]
            t0 = time.perf_counter()
            path = bench_run.run(*bench_run.parse_args(argv))
            record = json.loads(Path(path).read_text())
            e = record["metrics"][EXTRACTION_RATE]
            rows.append({"family": family, "train_subset": subset or e["n_reference"], "full": subset is None,
                         "budget_images": budget, "epochs": budget / e["n_reference"],
                         "extraction_rate": e["value"], "domain_rate": e.get("domain", {}).get("value"),
                         "threshold": e["threshold"], "heldout_flagged_rate": e["heldout_flagged_rate"],
                         "median_ratio_samples": e["median_ratio_samples"], "n": e["n"], "k": e["k"],
                         "wall_s": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
            (OUT / "extraction_control.json").write_text(json.dumps({**result, "trained": rows}, indent=2) + "\n")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    for family in sorted({r["family"] for r in rows}):
        rs = sorted((r for r in rows if r["family"] == family), key=lambda r: r["train_subset"])
        ax.plot([r["train_subset"] for r in rs], [100 * r["extraction_rate"] for r in rs], "o-", label=family)
    ax.axhline(1.0, color="grey", ls=":", label="held-out rate (1 %)")
    ax.set_xscale("log")
    ax.set_xlabel("training images (rightmost: the whole split)")
    ax.set_ylabel("extraction rate (%)")
    ax.set_title(f"samples flagged as copies, {rows[0]['budget_images']} images seen", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=["gan", "vae", "realnvp", "ddpm"])
    p.add_argument("--subsets", nargs="+", type=int, default=[32, 256, 2048], help="plus the whole split")
    p.add_argument("--budget-images", type=int, default=4096)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--noise", type=float, default=20.0)
    p.add_argument("--skip-trained", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dm = GenDataModule("mnist")
    dm.setup()
    result = {"command": "OMP_NUM_THREADS=1 python benchmarks/extraction_control.py " + " ".join(argv),
              "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
              "planted": planted(dm, 500, args.noise)}
    (OUT / "extraction_control.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["planted"], indent=1), flush=True)
    if not args.skip_trained:
        with tempfile.TemporaryDirectory() as work:
            result["trained"] = trained(args.families, [*args.subsets, None], args.budget_images, args.samples,
                                        Path(work), result)
        plot(result["trained"], OUT / "extraction_control.png")
    (OUT / "extraction_control.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
