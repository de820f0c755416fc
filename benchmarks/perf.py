"""``make perf``: framework overhead and throughput, written to ``benchmarks/perf.json``.

Per family, on the quick-profile network and the same fixed MNIST batches:

* training images/s through Lightning (``Trainer.fit``) against a bare PyTorch loop that calls the same
  ``training_step`` and optimiser (the overhead ratio bare/Lightning; target <= 1.05);
* sampling images/s of ``model.sample``;
* Inception feature images/s of genbench's extractor against a direct torch-fidelity call on the same
  images (ratio genbench/direct; target >= 0.95).

The two sides of each ratio run alternately in one process (A B A B ...) and the medians are compared, since
these machines are noisy. Wall time is measured between the starts of consecutive steps after a warm-up, so
it includes everything Lightning does between batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genbench.data import GenDataModule  # noqa: E402
from genbench.models import registry  # noqa: E402


def quick_model(name: str, dm: GenDataModule):
    base = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())["model"]
    prof = yaml.safe_load((ROOT / "configs" / "profile" / "quick" / f"{name}.yaml").read_text()) or {}
    init = dict(base.get("init_args") or {})
    init.update(((prof.get("model") or {}).get("init_args")) or {})
    torch.manual_seed(0)
    return registry.model_class(name)(data_shape=dm.data_shape, num_levels=dm.num_levels,
                                      num_classes=dm.num_classes, **init)


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())


def images_per_s(starts: list[float], warmup: int, batch_size: int) -> float:
    steps = len(starts) - 1 - warmup
    return steps * batch_size / (starts[-1] - starts[warmup])


def lightning_run(name, dm, loader, steps, warmup, batch_size) -> float:
    model = quick_model(name, dm)
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(model, train_dataloaders=loader)
    return images_per_s(clock.starts, warmup, batch_size)


def bare_run(name, dm, loader, steps, warmup, batch_size) -> float:
    """The same training_step and optimisers in a plain loop (no Trainer, no logging)."""
    model = quick_model(name, dm)
    model.train()
    model.log = lambda *a, **k: None  # no logger in a bare loop
    configured = model.configure_optimizers()
    scheds = []
    if isinstance(configured, dict):
        sched = configured.get("lr_scheduler")
        if sched is not None:
            scheds.append(sched["scheduler"] if isinstance(sched, dict) else sched)
        configured = configured["optimizer"]
    opts = configured if isinstance(configured, (list, tuple)) else [configured]
    if not model.automatic_optimization:
        model.optimizers = lambda use_pl_optimizer=True: opts if len(opts) > 1 else opts[0]
        model.manual_backward = lambda loss, *a, **k: loss.backward()
        model.toggled_optimizer = lambda opt: contextlib.nullcontext()
    # the per-step work that Lightning hooks do for a model (EMA of the weights), done by hand here
    ema_step = getattr(model, "update_ema", None) if model.automatic_optimization else None
    starts: list[float] = []
    it = iter(loader)
    for i in range(steps + 1):
        starts.append(time.perf_counter())
        batch = next(it)
        out = model.training_step(batch, i)
        if model.automatic_optimization:
            loss = out["loss"] if isinstance(out, dict) else out
            opts[0].zero_grad(set_to_none=True)
            loss.backward()
            opts[0].step()
            for sched in scheds:
                sched.step()
            if ema_step is not None:
                ema_step(model.ema_decay_at(i))
    return images_per_s(starts, warmup, batch_size)


def training_overhead(name: str, dm: GenDataModule, steps: int, warmup: int, batch_size: int, reps: int) -> dict:
    x, y = dm.split("train")
    n = (steps + 2) * batch_size
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size, shuffle=False, drop_last=True)
    light, bare = [], []
    for _ in range(reps):
        light.append(lightning_run(name, dm, loader, steps, warmup, batch_size))
        bare.append(bare_run(name, dm, loader, steps, warmup, batch_size))
    lm, bm = statistics.median(light), statistics.median(bare)
    return {"lightning_images_per_s": lm, "bare_images_per_s": bm, "overhead_ratio": bm / lm,
            "runs": {"lightning": light, "bare": bare}, "batch_size": batch_size, "timed_steps": steps - warmup}


def sampling_speed(name: str, dm: GenDataModule, n: int) -> dict:
    model = quick_model(name, dm)
    model.sample(2, generator=torch.Generator().manual_seed(0))  # warm-up
    t = time.perf_counter()
    model.sample(n, generator=torch.Generator().manual_seed(1))
    dt = time.perf_counter() - t
    return {"images_per_s": n / dt, "n": n, **model.sampler_info()}


def inception_speed(dm: GenDataModule, n: int, reps: int) -> dict:
    import torch_fidelity

    from genbench.metrics import fidelity

    extractor = fidelity.InceptionExtractor()
    images = dm.split("test")[0][:n]
    direct_fx = torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(extractor.weights.path))
    direct_fx.eval()
    rgb = images.repeat(1, 3, 1, 1)

    def ours() -> float:
        t = time.perf_counter()
        fidelity.extract_features(images, extractor, num_levels=256, batch_size=50, progress=False)
        return n / (time.perf_counter() - t)

    def direct() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, n, 50):
                direct_fx(rgb[i:i + 50])
        return n / (time.perf_counter() - t)

    a, b = [], []
    for _ in range(reps):
        a.append(ours())
        b.append(direct())
    am, bm = statistics.median(a), statistics.median(b)
    return {"genbench_images_per_s": am, "direct_torch_fidelity_images_per_s": bm, "ratio": am / bm, "n": n,
            "runs": {"genbench": a, "direct": b}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    p.add_argument("--steps", type=int, default=20, help="training steps per run (after one untimed)")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sample-n", type=int, default=64)
    p.add_argument("--inception-n", type=int, default=100)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "perf.json")
    args = p.parse_args(argv)
    registry.import_all()
    dm = GenDataModule("mnist")
    dm.setup()
    torch.manual_seed(0)
    report = {"device": "cpu", "torch_threads": torch.get_num_threads(), "families": {}}
    for name in args.models or registry.model_names():
        report["families"][name] = {
            "training": training_overhead(name, dm, args.steps, args.warmup, args.batch_size, args.reps),
            "sampling": sampling_speed(name, dm, args.sample_n),
        }
        print(name, json.dumps(report["families"][name]["training"]["overhead_ratio"]), flush=True)
    if args.inception_n > 0:
        report["inception_features"] = inception_speed(dm, args.inception_n, args.reps)
    from genbench.bench.record import atomic_write_text, environment

    report["environment"] = environment()
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v["training"]["overhead_ratio"] for k, v in report["families"].items()}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
