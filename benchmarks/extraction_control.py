"""Positive control of the extraction suite: does it fire on models that copy their training data?

1. Planted control: "models" whose samples are training images, and noisy copies of them (Gaussian noise,
   std ``--noise`` grey levels), must be flagged at close to 100 %; held-out test images near the target
   false-positive rate.
2. Trained control: each family, with its ``--profile`` networks and sampler (default ``quick``, the
   leaderboard's), is trained through the real bench CLI on training subsets of ``--subsets`` images and on
   the whole training split, all at the same budget of ``--budget-images`` images seen in batches of 32, and
   evaluated by the bench (its ``extraction_rate`` entry, against the subset it was trained on). A model fitted to 32 images
   sees each of them ``budget / 32`` times and should copy them; on the whole split it should not.

Each trained row is a bench run in its own directory under ``--work-dir`` (default ``extraction_runs/``); a
finished row is read back instead of rerun, so rows can be produced by several invocations (for instance two
processes, one per family) and ``--report`` rebuilds the table and plot from whatever has finished.

Writes ``benchmarks/extraction_control.{json,md,png}`` and ``benchmarks/extraction_flagged.png`` (flagged
planted copies above their nearest training images) and ``benchmarks/extraction_control_samples.png``
(samples of the 32-image models, flagged ones framed, beside their nearest training images).

    OMP_NUM_THREADS=1 python benchmarks/extraction_control.py                  # planted + every trained row
    OMP_NUM_THREADS=1 python benchmarks/extraction_control.py --skip-planted --families ddpm gan
    python benchmarks/extraction_control.py --report                           # table and plot only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from genbench.data.datamodule import GenDataModule
from genbench.metrics.extraction import EXTRACTION_RATE, extraction_suite, save_flagged_figure

OUT = Path(__file__).resolve().parent
ROOT = OUT.parent
FAMILIES = ("gan", "vae", "realnvp", "ddpm")
PLANTED_QUERIES = 500
BATCH = 32  # every row: the smallest subset is one batch (profiles use up to 64)
LIKELIHOOD_IMAGES = 64  # bits/dim is not what this control measures: a cheap estimate keeps the record valid


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


def row_dir(work: Path, profile: str, budget: int, family: str, subset: int | None) -> Path:
    return work / f"{profile}-{budget}" / f"{family}-{subset or 'full'}"


def bench_argv(family: str, subset: int | None, profile: str, budget: int, n_samples: int, where: Path) -> list[str]:
    return ["--model", family, "--profile", profile, "--seed", "0", "--no-wandb", "--no-leaderboard", "--no-progress",
            "--results-dir", str(where / "results"), "--runs-dir", str(where / "runs"), "--",
            f"--data.train_subset={'null' if subset is None else subset}", f"--budget.train_images={budget}",
            f"--data.batch_size={BATCH}",
            "--evaluation.sample_metrics=[domain]", "--evaluation.num_samples=0",
            f"--evaluation.memorization_samples={n_samples}", "--evaluation.curve_points=0",
            "--evaluation.sampler_steps_sweep=[]", f"--evaluation.likelihood_subset={LIKELIHOOD_IMAGES}",
            "--trainer.limit_val_batches=0"]


def row_from_record(record: dict, family: str, subset: int | None, budget: int, profile: str) -> dict:
    e = record["metrics"][EXTRACTION_RATE]
    training = record.get("compute", {}).get("training", {})
    return {"family": family, "profile": profile, "train_subset": subset or e["n_reference"], "full": subset is None,
            "budget_images": budget, "images_seen": training.get("images_seen"),
            "epochs": budget / e["n_reference"], "extraction_rate": e["value"], "n_flagged": e.get("n_flagged"),
            "domain_rate": e.get("domain", {}).get("value"), "threshold": e["threshold"],
            "heldout_flagged_rate": e["heldout_flagged_rate"], "median_ratio_samples": e["median_ratio_samples"],
            "median_ratio_heldout": e.get("median_ratio_heldout"), "n": e["n"], "k": e["k"],
            "train_pflop": training.get("train_pflop"), "sampler": record["metrics"].get("sampling", {}).get("sampler")}


def find_record(where: Path) -> Path | None:
    found = sorted((where / "results").glob("**/*.json")) if (where / "results").is_dir() else []
    return found[0] if found else None


def train_row(family: str, subset: int | None, profile: str, budget: int, n_samples: int, work: Path) -> dict:
    from genbench.bench import run as bench_run

    where = row_dir(work, profile, budget, family, subset)
    record_path = find_record(where)
    if record_path is None:
        t0 = time.perf_counter()
        record_path = Path(bench_run.run(*bench_run.parse_args(bench_argv(family, subset, profile, budget, n_samples, where))))
        print(f"{family} on {subset or 'all'} images: {time.perf_counter() - t0:.0f} s wall", flush=True)
    return row_from_record(json.loads(record_path.read_text()), family, subset, budget, profile)


def collect(work: Path, profile: str, budget: int) -> list[dict]:
    """Every finished trained row of this profile and budget."""
    rows = []
    for where in sorted((work / f"{profile}-{budget}").glob("*-*")):
        record_path = find_record(where)
        if record_path is None:
            continue
        family, _, subset = where.name.rpartition("-")
        rows.append(row_from_record(json.loads(record_path.read_text()), family,
                                    None if subset == "full" else int(subset), budget, profile))
    order = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(rows, key=lambda r: (order.get(r["family"], 99), r["train_subset"]))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    for family in [f for f in FAMILIES if any(r["family"] == f for r in rows)]:
        rs = sorted((r for r in rows if r["family"] == family), key=lambda r: r["train_subset"])
        ax.plot([r["train_subset"] for r in rs], [100 * r["extraction_rate"] for r in rs], "o-", label=family)
    ax.axhline(100 * rows[0]["heldout_flagged_rate"], color="grey", ls=":", label="held-out images flagged")
    ax.set_xscale("log")
    ax.set_xlabel("training images (rightmost: the whole split)")
    ax.set_ylabel("extraction rate (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"samples flagged as training copies, {rows[0]['budget_images']:,} images seen", fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def samples_figure(work: Path, profile: str, budget: int, subset: int, path: Path) -> bool:
    """Samples of each family trained on ``subset`` images above their nearest training image (the bench saves
    one such figure per run; this stacks the families' figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    figures = []
    for family in FAMILIES:
        found = sorted(row_dir(work, profile, budget, family, subset).glob("results/**/extraction/*.png"))
        if found:
            figures.append((family, mpimg.imread(found[0])))
    if not figures:
        return False
    fig, axes = plt.subplots(len(figures), 1, figsize=(7, 2.2 * len(figures)), dpi=110, squeeze=False)
    for ax, (family, image) in zip(axes[:, 0], figures, strict=True):
        ax.imshow(image)
        ax.set_axis_off()
        ax.set_title(f"{family}, trained on {subset} images", fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def write_report(result: dict, rows: list[dict]) -> None:
    lines = ["# Extraction control (MNIST)", "",
             "Produced by `OMP_NUM_THREADS=1 python benchmarks/extraction_control.py` (the trained rows may come "
             f"from several invocations, each a bench run under `extraction_runs/`; `--report` rebuilds this file); "
             f"{result['machine']}, on the shared 2-core Xeon. Criterion and threshold: "
             "`genbench/metrics/extraction.py` (k = 10, fpr = 1 % on 1000 validation images).", ""]
    if result.get("planted"):
        lines += [f"## Planted control ({PLANTED_QUERIES} queries each, against the 55 000 training images)", "",
                  "| queries | extraction rate (pixels) | domain features | threshold | held-out flagged | pixel NN s (1500 queries) |",
                  "|---|---|---|---|---|---|"]
        for name, p in result["planted"].items():
            lines.append(f"| {name} | {p['extraction_rate']:.3f} | {p['domain_rate']:.3f} | {p['threshold']:.3f} | "
                         f"{p['heldout_flagged_rate']:.3f} | {p['pixel_nn_seconds']:.1f} |")
        lines += ["", "`extraction_flagged.png`: the lowest-ratio flagged noisy copies above their nearest training images.", ""]
    if rows:
        r0 = rows[0]
        lines += [f"## Trained control ({r0['profile']} networks and samplers, {r0['budget_images']:,} training images "
                  f"seen by every run, {r0['n']} samples each, seed 0)", "",
                  "Each run trains on the first `train_subset` images of the training split and is checked against "
                  "exactly those images (the threshold is re-chosen on the 1000 validation images against the same "
                  "subset).", "",
                  "| family | train images | epochs | extraction rate | flagged | domain rate | median d1/dk samples | median d1/dk held-out | threshold |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            dom = "—" if r["domain_rate"] is None else f"{r['domain_rate']:.3f}"
            held = "—" if r["median_ratio_heldout"] is None else f"{r['median_ratio_heldout']:.3f}"
            lines.append(f"| {r['family']} | {r['train_subset']:,}{' (all)' if r['full'] else ''} | {r['epochs']:.3g} | "
                         f"{r['extraction_rate']:.3f} | {r['n_flagged']}/{r['n']} | {dom} | {r['median_ratio_samples']:.3f} | "
                         f"{held} | {r['threshold']:.3f} |")
        lines += ["", "`extraction_control.png`: the rate against the subset size; `extraction_control_samples.png`: "
                  "samples of the models trained on the smallest subset above their nearest training images "
                  "(the bench's flagged-sample figure of each run).", ""]
    (OUT / "extraction_control.md").write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--subsets", nargs="+", type=int, default=[32, 256, 2048], help="plus the whole split")
    p.add_argument("--no-full", action="store_true", help="skip the whole-split rows")
    p.add_argument("--profile", default="quick", help="networks and samplers of this profile (budget overridden)")
    p.add_argument("--budget-images", type=int, default=32000)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--noise", type=float, default=20.0)
    p.add_argument("--work-dir", type=Path, default=ROOT / "extraction_runs")
    p.add_argument("--skip-planted", action="store_true", help="keep the planted rows of the existing json")
    p.add_argument("--skip-trained", action="store_true")
    p.add_argument("--report", action="store_true", help="rebuild the table and plot from finished rows only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    previous = json.loads((OUT / "extraction_control.json").read_text()) if (OUT / "extraction_control.json").exists() else {}
    result = {"command": "OMP_NUM_THREADS=1 python benchmarks/extraction_control.py " + " ".join(argv),
              "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
              "planted": previous.get("planted")}
    if not (args.skip_planted or args.report):
        dm = GenDataModule("mnist")
        dm.setup()
        result["planted"] = planted(dm, PLANTED_QUERIES, args.noise)
        print(json.dumps(result["planted"], indent=1), flush=True)
    if not (args.skip_trained or args.report):
        for family in args.families:
            for subset in [*args.subsets, *([] if args.no_full else [None])]:
                print(json.dumps(train_row(family, subset, args.profile, args.budget_images, args.samples, args.work_dir)),
                      flush=True)
    rows = collect(args.work_dir, args.profile, args.budget_images)
    result["trained"] = rows
    if rows:
        plot(rows, OUT / "extraction_control.png")
        samples_figure(args.work_dir, args.profile, args.budget_images, min(r["train_subset"] for r in rows),
                       OUT / "extraction_control_samples.png")
    (OUT / "extraction_control.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(result, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
