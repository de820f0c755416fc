"""The class-conditional contract and suites: p(x | y) against p(x), accuracy, per-class FD, the guidance sweep.

The models here have closed forms: independent pixels per class (exact log p(x | y) and an exact marginal),
and memorisers that return training images of the requested class (the classifier's own accuracy, the floor's
FD)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from genbench.bench.config import EvalConfig
from genbench.bench.evaluate import evaluate
from genbench.bench.suites import SuiteConfigError, select
from genbench.capabilities import CLASS_CONDITIONAL, GUIDANCE
from genbench.metrics import table as T
from genbench.metrics.conditional import class_fd, conditional_accuracy, label_information
from genbench.models.base import LIKELIHOOD_EXACT, GenerativeModel, log_mean_exp_over_classes

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluate import PixelModel  # noqa: E402


class ClassPixelModel(GenerativeModel):
    """Independent pixels per class, fitted to the training images of each class (add-one smoothing):
    exact log p(x | y), and the exact marginal log (1/K) sum_y p(x | y) without labels."""

    family = "flow"
    likelihood_kind = LIKELIHOOD_EXACT

    def __init__(self, datamodule, class_conditional: bool = True, ignore_labels: bool = False) -> None:
        super().__init__(datamodule.data_shape, datamodule.num_levels, datamodule.num_classes)
        self.save_hyperparameters(ignore=["datamodule"])
        self.check_conditional_init(class_conditional)
        x, y = datamodule.split("train")
        flat = x.reshape(len(x), -1).long()
        counts = torch.ones(self.num_classes, flat.shape[1], self.num_levels, dtype=torch.float64)
        for c in range(self.num_classes):
            counts[c].scatter_add_(1, flat[y == c].T, torch.ones_like(flat[y == c].T, dtype=torch.float64))
        if ignore_labels:  # every class gets the pooled histogram: p(x | y) = p(x)
            counts[:] = counts.sum(0, keepdim=True)
        self.register_buffer("log_probs", (counts / counts.sum(-1, keepdim=True)).log())  # [K, D, L]

    def sample(self, n, generator=None, labels=None):
        labels = self.sample_labels(n, labels, generator)
        probs = self.log_probs[labels].exp().reshape(-1, self.num_levels).float()
        idx = torch.multinomial(probs, 1, generator=generator).reshape(n, *self.data_shape)
        return idx.to(torch.uint8).cpu()

    def _given(self, x, labels):
        flat = x.reshape(len(x), -1).long()
        lp = self.log_probs[labels]  # [N, D, L]
        return lp.gather(2, flat.unsqueeze(2)).squeeze(2).sum(1)

    def log_likelihood(self, x, labels=None):
        self.check_input(x)
        labels = self.check_labels(labels, len(x))
        if labels is not None:
            return self._given(x, labels)
        return log_mean_exp_over_classes(lambda y: self._given(x, y), len(x), self.num_classes, self.device)

    def likelihood_info(self):
        return {"kind": self.likelihood_kind, "conditioning": "exact marginal over classes"}


class ClassCopyModel(ClassPixelModel):
    """Returns training images of the requested class (a memoriser), with a guidance weight w: a sample is of the
    requested class with probability min(1, w / 2), else of class (y + 1) mod K."""

    def __init__(self, datamodule, guidance_scale: float = 2.0) -> None:
        super().__init__(datamodule)
        self.save_hyperparameters(ignore=["datamodule"])
        self.train_x, self.train_y = datamodule.split("train")
        self.scale = guidance_scale

    @property
    def has_guidance(self):
        return True

    def set_guidance_scale(self, scale):
        self.scale = float(scale)

    def current_guidance_scale(self):
        return self.scale

    def sample(self, n, generator=None, labels=None):
        labels = self.sample_labels(n, labels, generator).cpu()
        hit = torch.rand(n, generator=generator) < min(1.0, self.scale / 2)
        wanted = torch.where(hit, labels, (labels + 1) % self.num_classes)
        out = torch.empty((n, *self.data_shape), dtype=torch.uint8)
        for i, c in enumerate(wanted.tolist()):
            pool = torch.nonzero(self.train_y == c).flatten()
            out[i] = self.train_x[pool[torch.randint(len(pool), (1,), generator=generator)]]
        return out


def _cfg(**kw):
    base = dict(num_samples=40, sample_batch_size=40, likelihood_subset=60, likelihood_batch_size=25,
                memorization_samples=0, sample_metrics=["domain"], conditional_samples_per_class=20, curve_points=0)
    return EvalConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ contract
def test_labels_are_checked_and_unconditional_models_refuse_them(digits):
    model = ClassPixelModel(digits)
    assert CLASS_CONDITIONAL in model.capabilities and GUIDANCE not in model.capabilities
    assert model.describe()["class_conditional"] is True
    x = digits.split("test")[0][:4]
    for bad, err, match in ((torch.tensor([0, 1, 2]), ValueError, "shape"), (torch.tensor([0, 1, 2, 10]), ValueError,
                            "classes 0..9"), (torch.tensor([0.0, 1, 2, 3]), TypeError, "integer")):
        with pytest.raises(err, match=match):
            model.log_likelihood(x, bad)
        with pytest.raises(err, match=match):
            model.sample(4, labels=bad)
    g = torch.Generator().manual_seed(0)
    assert model.sample(5, generator=g).shape == (5, 1, 8, 8)  # uniform labels drawn on the generator
    plain = PixelModel()
    with pytest.raises(ValueError, match="unconditional"):
        plain.check_labels(torch.zeros(4, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="class labels"):
        ClassPixelModel.__new__(ClassPixelModel).__init__(type("NoLabels", (), {
            "data_shape": (1, 8, 8), "num_levels": 17, "num_classes": 0,
            "split": lambda self, s: (None, None)})())


def test_marginal_over_classes_is_the_log_mean_exp():
    values = torch.tensor([[-3.0, -1.0], [-2.0, -7.0], [-5.0, -4.0]], dtype=torch.float64)  # [K, N]
    got = log_mean_exp_over_classes(lambda y: values[y, torch.arange(2)], 2, 3, torch.device("cpu"))
    want = torch.log(values.exp().mean(0))
    assert torch.allclose(got, want, atol=1e-12)


# ------------------------------------------------------------------------------------------------ metrics
def test_label_information_closed_form_and_bound():
    d, k = 64, 10
    log_px = torch.tensor([-100.0, -90.0], dtype=torch.float64)
    log_pxy = log_px + torch.tensor([math.log(10.0), 0.5], dtype=torch.float64)  # the first at the bound exactly
    out = label_information(log_pxy, log_px, d, k)
    assert out["bound"] == pytest.approx(math.log2(10) / 64)
    assert out["value"] == pytest.approx((math.log(10.0) + 0.5) / 2 / (d * math.log(2)))
    assert out["within_bound"] and out["images_over_bound"] == 0
    over = label_information(log_px + 3.0, log_px, d, k)  # 3 nats > ln 10: a marginal that is not one
    assert not over["within_bound"] and over["images_over_bound"] == 2


def test_accuracy_and_class_fd_closed_forms():
    probs = torch.eye(3)[torch.tensor([0, 1, 2, 2, 0, 0])]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    acc = conditional_accuracy(probs, labels, 3)
    assert acc["value"] == pytest.approx(0.5) and acc["per_class"] == [0.5, 0.5, 0.5] and acc["classes_produced"] == 3
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(400, 4, generator=g, dtype=torch.float64)
    ref_y = torch.arange(400) % 2
    same = class_fd(ref, ref_y, ref, ref_y, num_classes=2)
    assert same["value"] == pytest.approx(0.0, abs=1e-6)
    shifted = class_fd(ref + 1.0, ref_y, ref, ref_y, num_classes=2)  # a mean shift of 1 in 4 dims: FD = 4
    assert shifted["value"] == pytest.approx(4.0, abs=1e-6) and shifted["per_class"] == pytest.approx([4.0, 4.0])


# ------------------------------------------------------------------------------------------------ suites
def test_conditional_suites_apply_only_to_conditional_models(digits):
    cfg = _cfg()
    names = [s.name for s, _ in select(PixelModel(), cfg)]
    assert "conditional_likelihood" not in names and "conditional_samples" not in names
    names = [s.name for s, ok in select(ClassPixelModel(digits), cfg) if ok]
    assert {"conditional_likelihood", "conditional_samples"} <= set(names)
    with pytest.raises(SuiteConfigError, match="guidance_scales"):
        select(ClassPixelModel(digits), _cfg(guidance_scales=[1.0, 2.0]))


def test_evaluate_scores_what_conditioning_promises(digits, tmp_path):
    model = ClassPixelModel(digits)
    out = evaluate(model, digits, _cfg(), progress=False, cache_dir=str(tmp_path))
    x, y = digits.split("test")
    x, y = x[:60], y[:60]
    d = model.num_dims
    want_cond = float((-model.log_likelihood(x, y)).mean()) / (d * math.log(2))
    want_marg = float((-model.log_likelihood(x)).mean()) / (d * math.log(2))
    assert out[T.BPD_CONDITIONAL]["value"] == pytest.approx(want_cond, rel=1e-9)
    assert out[T.BPD]["value"] == pytest.approx(want_marg, rel=1e-9)
    info = out[T.LABEL_INFORMATION]
    assert info["value"] == pytest.approx(want_marg - want_cond, rel=1e-6)
    assert 0 < info["value"] <= info["bound"] and info["images_over_bound"] == 0  # exact marginal: every image
    per_class = out[T.BPD_CONDITIONAL]["per_class"]
    assert len(per_class) == 10 and all(v is not None for v in per_class)
    acc = out[T.CONDITIONAL_ACCURACY]
    assert acc["n"] == 200 and acc["value"] > 0.5  # class-wise pixel marginals are recognisable digits
    fd = out[T.CLASS_FD]
    assert fd["classes_scored"] == 10 and fd["value"] > fd["floor"] > 0


def test_a_model_that_ignores_labels_scores_chance_and_no_information(digits, tmp_path):
    model = ClassPixelModel(digits, ignore_labels=True)
    out = evaluate(model, digits, _cfg(), progress=False, cache_dir=str(tmp_path))
    assert out[T.LABEL_INFORMATION]["value"] == pytest.approx(0.0, abs=1e-9)
    assert out[T.CONDITIONAL_ACCURACY]["value"] < 0.3  # chance is 0.1


def test_memoriser_reaches_the_classifier_accuracy_and_the_floor(digits, tmp_path):
    model = ClassCopyModel(digits, guidance_scale=2.0)
    out = evaluate(model, digits, _cfg(conditional_samples_per_class=30), progress=False, cache_dir=str(tmp_path))
    acc, fd = out[T.CONDITIONAL_ACCURACY], out[T.CLASS_FD]
    # training images of the requested class: the classifier's own accuracy (on training images, a little above
    # its test accuracy), every class produced
    assert acc["value"] >= acc["real_test_accuracy"] - 0.05 and acc["classes_produced"] == 10
    assert fd["value"] < 3 * fd["floor"] + 1.0  # real images of the class: near the real-vs-real floor


def test_guidance_sweep_trades_and_restores_the_weight(digits, tmp_path):
    model = ClassCopyModel(digits, guidance_scale=1.5)
    cfg = _cfg(guidance_scales=[0.0, 1.0, 2.0], guidance_num_samples=60, conditional_samples_per_class=0)
    out = evaluate(model, digits, cfg, progress=False, cache_dir=str(tmp_path))
    sweep = out[T.GUIDANCE_SWEEP]
    assert [p["scale"] for p in sweep] == [0.0, 1.0, 2.0] and all(p["n"] == 60 for p in sweep)
    acc = [p["accuracy"] for p in sweep]
    assert acc[0] < 0.2 < acc[1] < acc[2] and acc[2] >= 0.8  # w / 2 of the samples are of their class
    assert all(p[T.DOMAIN_FD] >= 0 and T.FID not in p for p in sweep)  # FID only where the protocol asks for it
    assert model.current_guidance_scale() == 1.5  # the sampler the record reports is left as configured


# ------------------------------------------------------------------------------------------------ bench wiring
ROOT = Path(__file__).resolve().parents[1]


def test_cond_composes_the_variant_config_and_files_the_run_apart(tmp_path):
    from genbench import paths
    from genbench.bench.run import (
        BenchError,
        conditional_models,
        config_files,
        parse_args,
        resolve_names,
        run_identity,
    )

    configs = paths.configs_dir(None)
    assert {"ddpm", "gan", "vae", "realnvp"} <= set(conditional_models(configs))
    files = config_files(configs, "ddpm", "mnist", "quick", class_conditional=True)
    names = [f"{f.parent.name}/{f.name}" for f in files]
    # after the model's profile file (its choices win over the profile's), before the shared protocol
    assert names[-3:] == ["quick/ddpm.yaml", "conditional/ddpm.yaml", "quick/evaluation.yaml"]
    assert "conditional/ddpm.yaml" not in [f"{f.parent.name}/{f.name}" for f in
                                           config_files(configs, "ddpm", "mnist", "quick")]
    with pytest.raises(BenchError, match="no class-conditional variant.*COND=1 works with: ddpm"):
        config_files(configs, "ldm", "mnist", "quick", class_conditional=True)
    args, _ = parse_args(["--model", "ddpm", "--class-conditional", "--run-name", "w3", "--runs-dir", str(tmp_path)])
    run_id, run_dir = run_identity(resolve_names("ddpm", "mnist"), args)
    assert run_id == "mnist-quick-ddpm-cond-w3-seed0" and run_dir == tmp_path / "mnist" / "quick" / "ddpm-cond-w3" / "seed0"


@pytest.mark.parametrize("cond, flag", [("1", True), ("0", False), ("", False)])
def test_make_cond_passes_the_flag(cond, flag):
    import subprocess

    out = subprocess.run(["make", "-n", "--no-print-directory", "bench", "MODEL=gan", "PROFILE=smoke", f"COND={cond}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    command = out.stdout.split("genbench bench", 1)[1]  # the recipe, continuation lines included
    assert ("--class-conditional" in command) is flag


def test_leaderboard_has_a_conditional_section(tmp_path):
    from test_leaderboard import _record

    from genbench import paths
    from genbench.bench import leaderboard, plots
    from genbench.bench.record import write_record

    res = tmp_path / "benchmarks" / "results"
    sweep = [{"scale": w, "n": 40, "fid": 50.0 - 5 * w, "domain_fd": 9.0, "accuracy": 0.5 + 0.1 * w} for w in (0, 1, 2)]
    cond = _record("ddpm-cond", "diffusion", 1.5, 60.0, metrics={
        T.BPD_CONDITIONAL: {"value": 1.496, "stderr": 0.01, "n": 100, "per_class": [1.5] * 10},
        T.LABEL_INFORMATION: {"value": 0.004, "stderr": 0.0001, "bound": 0.00424, "within_bound": True},
        T.CONDITIONAL_ACCURACY: {"value": 0.91, "classes_produced": 10, "num_classes": 10, "n": 100,
                                 "per_class": [0.9] * 10},
        T.CLASS_FD: {"value": 12.5, "floor": 3.25, "n_per_class": 10}, T.GUIDANCE_SWEEP: sweep})
    cond.model_info["class_conditional"] = True
    cond.artifacts["class_grid"] = "class_grids/digits-smoke-ddpm-cond-seed0.png"
    plain = _record("ddpm", "diffusion", 1.5, 60.0)
    for r in (cond, plain):
        write_record(r, res)
        plots.save_sample_grid(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), res / r.artifacts["sample_grid"], levels=17)
    plots.save_sample_grid(torch.zeros(100, 1, 8, 8, dtype=torch.uint8), res / cond.artifacts["class_grid"],
                           levels=17, nrow=10)
    md, page = leaderboard.build(res, tmp_path / "benchmarks", paths.reference_file())
    text = md.read_text()
    assert text.count("### Class-conditional") == 1
    row = next(x for x in text.splitlines() if x.startswith("| ddpm-cond | 1.500"))
    assert "1.496 ± 0.010" in row and "+0.0040 ± 0.0001 (✓ ≤ 0.0042)" in row and "0.910 (10/10 classes, n=100)" in row
    assert "12.5 (3.2 @10/class)" in row and "bits/dim \\| y" in text  # a bar inside a cell is escaped
    assert "![ddpm-cond](results/class_grids/digits-smoke-ddpm-cond-seed0.png)" in text
    assert (tmp_path / "benchmarks" / "leaderboard_files" / "digits-smoke-guidance.png").is_file()
    assert "Class-conditional" in page.read_text() and "guidance" in page.read_text()


def test_the_training_curve_leaves_the_conditional_metrics_out(digits, tmp_path):
    from genbench.bench.curve import curve_protocol

    cfg = curve_protocol(_cfg(guidance_scales=[0.0, 1.0], curve_points=3))
    assert not cfg.conditional_metrics and cfg.guidance_scales == []
    chosen = [s.name for s, _ in select(ClassCopyModel(digits), cfg)]
    assert not {"conditional_likelihood", "conditional_samples", "guidance_sweep"} & set(chosen)
    out = evaluate(ClassPixelModel(digits), digits, cfg, progress=False, cache_dir=str(tmp_path))
    assert T.BPD in out and not {T.BPD_CONDITIONAL, T.CONDITIONAL_ACCURACY, T.CLASS_FD} & set(out)
