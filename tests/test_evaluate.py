"""The evaluation harness on contract-keeping stand-in models (closed-form likelihoods, seeded samples)."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from genbench.bench.config import EvalConfig
from genbench.bench.evaluate import evaluate
from genbench.data.datamodule import GenDataModule
from genbench.data.toy2d import make_toy2d
from genbench.metrics import table as N
from genbench.metrics.likelihood import mean_and_stderr
from genbench.metrics.memorization import memorization_report, nearest_neighbor_l2
from genbench.models.base import LIKELIHOOD_EXACT, LIKELIHOOD_NONE, GenerativeModel, LikelihoodUnavailable

sys.path.insert(0, str(Path(__file__).parent))
from test_fidelity import TinyExtractor  # noqa: E402


class PixelModel(GenerativeModel):
    """Independent pixels with P(k) proportional to (k + 1) (``skewed``) or uniform: exact closed-form NLL."""

    family = "flow"
    likelihood_kind = LIKELIHOOD_EXACT

    def __init__(self, data_shape: tuple[int, ...] = (1, 8, 8), num_levels: int = 17, num_classes: int = 10,
                 skewed: bool = True) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.save_hyperparameters()
        logits = torch.log(torch.arange(1, num_levels + 1, dtype=torch.float64)) if skewed else \
            torch.zeros(num_levels, dtype=torch.float64)
        self.register_buffer("log_probs", torch.log_softmax(logits, 0))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def sample(self, n, generator=None):
        idx = torch.multinomial(self.log_probs.exp().float(), n * self.num_dims, replacement=True,
                                generator=generator)
        return idx.reshape(n, *self.data_shape).to(torch.uint8).cpu()

    def log_likelihood(self, x):
        self.check_input(x)
        return self.log_probs[x.long()].reshape(len(x), -1).sum(1)

    def likelihood_variants(self):
        return {"halved": lambda x: self.log_likelihood(x) / 2}

    def training_step(self, batch, batch_idx):
        return (self.dummy - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class CopyModel(PixelModel):
    """Samples are training images: a memoriser. It has no likelihood (like a GAN)."""

    family = "gan"
    likelihood_kind = LIKELIHOOD_NONE

    def __init__(self, data_shape: tuple[int, ...] = (1, 8, 8), num_levels: int = 17, num_classes: int = 10) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.bank = torch.zeros((1, *data_shape), dtype=torch.uint8)

    def sample(self, n, generator=None):
        i = torch.randint(0, len(self.bank), (n,), generator=generator)
        return self.bank[i].clone()

    def log_likelihood(self, x):
        raise LikelihoodUnavailable("CopyModel defines no density")

    def likelihood_variants(self):
        return {}


class ToyModel(GenerativeModel):
    """The true 2-D density itself: its NLL equals the density's entropy."""

    family = "flow"
    likelihood_kind = LIKELIHOOD_EXACT

    def __init__(self, data_shape: tuple[int, ...] = (2,), num_levels: int = 0, num_classes: int = 8) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.density = make_toy2d("eight_gaussians")

    def sample(self, n, generator=None):
        return self.density.sample(n, generator)[0]

    def log_likelihood(self, x):
        self.check_input(x)
        return self.density.log_prob(x)


def _cfg(**kw) -> EvalConfig:
    base = dict(num_samples=48, sample_batch_size=20, kid_subset_size=32, likelihood_subset=101,
                likelihood_batch_size=40, memorization_samples=24, seed=3)
    base.update(kw)
    return EvalConfig(**base)


def test_evaluate_likelihood_sample_metrics_and_record(digits, tmp_path):
    model = PixelModel()
    model.train()
    cfg = _cfg()
    out = evaluate(model, digits, cfg, progress=False, feature_extractor=TinyExtractor(), cache_dir=str(tmp_path))
    assert model.training  # training mode restored
    json.dumps(out, allow_nan=False)  # strict JSON
    test_x = digits.split("test")[0][:101]
    nll = -model.log_likelihood(test_x)
    mean, se = mean_and_stderr(nll / (64 * math.log(2)))
    assert out[N.BPD]["value"] == pytest.approx(mean, rel=1e-12)
    assert out[N.BPD]["stderr"] == pytest.approx(se, rel=1e-12)
    assert out[N.BPD]["n"] == 101 and out[N.BPD]["kind"] == LIKELIHOOD_EXACT
    nats, nats_se = mean_and_stderr(nll)
    assert out[N.BPD]["nll_nats"] == pytest.approx(nats, rel=1e-12)
    assert out[N.BPD]["nll_nats_stderr"] == pytest.approx(nats_se, rel=1e-12)
    # the record alone lets a reader check bpd = nll_nats / (D ln 2), for the mean and its standard error
    d = out[N.BPD]["num_dims"]
    assert d == 64 and out[N.BPD]["value"] == pytest.approx(out[N.BPD]["nll_nats"] / (d * math.log(2)), rel=1e-12)
    assert out[N.BPD]["stderr"] == pytest.approx(out[N.BPD]["nll_nats_stderr"] / (d * math.log(2)), rel=1e-12)
    halved = out[N.bpd_variant("halved")]
    assert halved["nll_nats"] == pytest.approx(nats / 2, rel=1e-12) and halved["n"] == 101
    assert out[N.bpd_variant("halved")]["value"] == pytest.approx(mean / 2, rel=1e-12)
    for key in (N.FID, N.KID, N.PRECISION, N.RECALL):
        assert out[key]["n"] == 48 and out[key]["reference_split"] == "test"
        assert out[key]["extractor"] == "tiny-test" and out[key]["weights_sha256"] == "ab" * 32
    assert out[N.FID]["value"] > 0 and out[N.KID]["subset_size"] == 32
    assert out[N.INCEPTION_SCORE]["available"] is False and "head" in out[N.INCEPTION_SCORE]["reason"]
    floor = out[N.FID_FLOOR]
    assert floor["n"] == 48 and floor["protocol"] == "train subset vs test" and floor["train_range"] == [0, 48]
    assert 0 < floor["value"] < out[N.FID]["value"]  # independent pixels are far from real digits
    assert floor["kid"] < out[N.KID]["value"] and floor["kid_subset_size"] == 32
    # the floor's KID carries its std over subsets, like the models' KID
    assert floor["kid_std"] > 0 and out[N.KID]["std"] > 0
    assert out[N.FID]["feature_batch_size"] == cfg.feature_batch_size == 64
    assert out[N.SAMPLING]["n"] == 48 and out[N.SAMPLING]["images_per_s"] > 0
    assert out[N.SAMPLING]["eval_mode"] is True
    assert out[N.MEMORIZATION]["n"] == 24 and out[N.MEMORIZATION]["exact_copies"] == 0


def test_validation_protocol_scores_validation_images_only(digits, tmp_path):
    """The tuning protocol (benchmarks/ablations.py) reads the validation split, never the test split."""
    model = PixelModel()
    cfg = _cfg(likelihood_split="val", reference_split="val", likelihood_subset=30, memorization_samples=0)
    out = evaluate(model, digits, cfg, progress=False, feature_extractor=TinyExtractor(), cache_dir=str(tmp_path))
    val_x = digits.split("val")[0][:30]
    mean, _ = mean_and_stderr(-model.log_likelihood(val_x) / (64 * math.log(2)))
    assert out[N.BPD]["value"] == pytest.approx(mean, rel=1e-12) and out[N.BPD]["subset"] == "val[0:30]"
    assert out[N.FID]["reference_split"] == "val" and out[N.FID_FLOOR]["protocol"] == "train subset vs val"
    with pytest.raises(ValueError, match="likelihood_split"):
        _cfg(likelihood_split="train")
    with pytest.raises(ValueError, match="reference_split"):
        _cfg(reference_split="validation")


class TwoSamplerModel(PixelModel):
    """PixelModel whose sample variant ``uniform`` draws from the uniform pixel distribution instead."""

    def sample_variants(self):
        return {"uniform": "uniform pixels"}

    @contextlib.contextmanager
    def sample_variant(self, name):
        main = self.log_probs.clone()
        self.log_probs.fill_(-math.log(self.num_levels))
        try:
            yield
        finally:
            self.log_probs.copy_(main)


def test_sample_variants_are_scored_beside_the_main_sampler(digits, tmp_path):
    """fid_<variant> is the FID the variant's sampler gets on its own, with the same seeds; the main FID is
    that of the declared sampler, untouched by the variant."""
    kw = dict(progress=False, feature_extractor=TinyExtractor(), cache_dir=str(tmp_path))
    cfg = _cfg(likelihood_subset=8, memorization_samples=0)
    both = evaluate(TwoSamplerModel(), digits, cfg, **kw)
    skewed = evaluate(PixelModel(), digits, cfg, **kw)
    uniform = evaluate(PixelModel(skewed=False), digits, cfg, **kw)
    assert both[N.FID]["value"] == skewed[N.FID]["value"]
    variant = both[N.fid_variant("uniform")]
    assert variant["value"] == uniform[N.FID]["value"] != both[N.FID]["value"]
    assert variant["n"] == 48 and variant["variant"] == "uniform" and variant["reference_split"] == "test"
    assert N.lookup(N.fid_variant("uniform")).label == "FID (sample variant)"
    assert not any(k.startswith("fid_") and k not in (N.FID_FLOOR, N.FID_VS_STEPS) for k in skewed)
    with pytest.raises(ValueError, match="collides"):
        N.fid_variant("floor")


def test_evaluate_is_seeded(digits, tmp_path):
    kw = dict(progress=False, feature_extractor=TinyExtractor(), cache_dir=str(tmp_path))
    cfg = _cfg(likelihood_subset=8, memorization_samples=0)
    a = evaluate(PixelModel(), digits, cfg, **kw)
    b = evaluate(PixelModel(), digits, cfg, **kw)
    c = evaluate(PixelModel(), digits, _cfg(likelihood_subset=8, memorization_samples=0, seed=4), **kw)
    assert a[N.FID]["value"] == b[N.FID]["value"] != c[N.FID]["value"]
    assert a[N.FID_FLOOR]["value"] == c[N.FID_FLOOR]["value"]  # real-vs-real does not depend on the model


def test_evaluate_model_without_likelihood_and_memoriser(digits, tmp_path):
    model = CopyModel()
    model.bank = digits.split("train")[0][:64]
    cfg = _cfg(num_samples=32, memorization_samples=32, sample_metrics=["fid"], reference_split="train")
    out = evaluate(model, digits, cfg, progress=False, feature_extractor=TinyExtractor(), cache_dir=str(tmp_path))
    assert out[N.BPD] == {"available": False, "reason": "CopyModel defines no density"}
    memo = out[N.MEMORIZATION]
    assert memo["exact_copies"] == 32 and memo["ratio"] == 0.0 and memo["mean_nn_l2_test"] > 0
    extraction = out["extraction_rate"]  # the planted control through the harness: every sample flagged
    assert extraction["value"] == 1.0 and extraction["n"] == 32 and extraction["generalising"] is False
    assert extraction["n_reference"] == len(digits.split("train")[0]) and "domain" not in extraction
    assert N.KID not in out and N.PRECISION not in out
    assert out[N.FID_FLOOR]["train_range"] == [32, 64]  # disjoint from the train reference images


def test_nearest_neighbor_is_exact():
    g = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 256, (300, 1, 6, 6), generator=g, dtype=torch.uint8)
    q = torch.randint(0, 256, (17, 1, 6, 6), generator=g, dtype=torch.uint8)
    d, i = nearest_neighbor_l2(q, ref, 256, batch_size=5, reference_chunk=64)
    brute = torch.cdist(q.reshape(17, -1).double() / 255, ref.reshape(300, -1).double() / 255)
    torch.testing.assert_close(d, brute.min(1).values)
    torch.testing.assert_close(i, brute.argmin(1))
    report = memorization_report(ref[:10], ref, q[:10], 256)
    assert report["exact_copies"] == 10 and report["ratio"] == 0.0


def test_evaluate_toy2d_reports_nll_nats_against_true_entropy():
    dm = GenDataModule("eight_gaussians")
    cfg = EvalConfig(num_samples=64, sample_batch_size=64, likelihood_subset=4000, likelihood_batch_size=2000,
                     memorization_samples=0)
    out = evaluate(ToyModel(), dm, cfg, progress=False)
    nll = out[N.NLL_NATS]
    assert N.BPD not in out and out[N.FID]["available"] is False
    assert abs(nll["value"] - nll["true_entropy_nats"]) < 4 * math.hypot(nll["stderr"], nll["true_entropy_stderr"])
    assert out[N.SAMPLING]["n"] == 64


def test_evaluate_rejects_mismatched_model(digits):
    with pytest.raises(ValueError, match="do not match"):
        evaluate(PixelModel(data_shape=(1, 28, 28), num_levels=256), digits, _cfg(), progress=False)


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import lightning as L
    import torch
    from genbench.bench.config import EvalConfig
    from genbench.bench.evaluate import evaluate
    from genbench.data.datamodule import GenDataModule
    from test_evaluate import PixelModel
    from test_fidelity import TinyExtractor

    if __name__ == "__main__":
        dm = GenDataModule("digits", batch_size=16)
        model = PixelModel()
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, default_root_dir={root!r})
        trainer.fit(model, datamodule=dm)
        cfg = EvalConfig(num_samples=31, sample_batch_size=8, kid_subset_size=16, likelihood_subset=33,
                         likelihood_batch_size=5, memorization_samples=31, seed=11)
        out = evaluate(model, dm, cfg, trainer=trainer, progress=False, feature_extractor=TinyExtractor(),
                       cache_dir={root!r})
        with open({root!r} + f"/rank{{trainer.global_rank}}.json", "w") as f:
            json.dump(out, f)
        torch.distributed.destroy_process_group()  # a clean exit of every rank
    """
)


def test_evaluate_distributed_gathers_each_example_once(digits, tmp_path):
    script = tmp_path / "ddp_eval.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path)))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1  # broadcast from rank 0
    single = evaluate(PixelModel(), digits, EvalConfig(num_samples=0, likelihood_subset=33, likelihood_batch_size=7,
                                                        memorization_samples=0), progress=False)
    assert r0[N.BPD]["n"] == 33 and r0[N.BPD]["value"] == pytest.approx(single[N.BPD]["value"], rel=1e-12)
    assert r0[N.BPD]["stderr"] == pytest.approx(single[N.BPD]["stderr"], rel=1e-12)
    # the documented sample protocol: rank r draws its contiguous share (16, 15) with seed 11 + r
    model = PixelModel()
    shares = []
    for r, n in enumerate((16, 15)):
        g = torch.Generator().manual_seed(11 + r)
        shares += [model.sample(b, generator=g) for b in ((8, 8) if n == 16 else (8, 7))]
    expected = memorization_report(torch.cat(shares), digits.split("train")[0], digits.split("test")[0][:31], 17)
    assert r0[N.MEMORIZATION]["mean_nn_l2_samples"] == pytest.approx(expected["mean_nn_l2_samples"], rel=1e-12)
    assert r0[N.SAMPLING]["n"] == 31 and r0[N.SAMPLING]["world_size"] == 2


def test_toy2d_evaluation_reports_mode_coverage_and_entropy():
    from genbench.data import GenDataModule
    from genbench.models.gan import GAN
    from genbench.models.realnvp import RealNVP

    dm = GenDataModule("eight_gaussians")
    dm.setup()
    cfg = EvalConfig(num_samples=200, memorization_samples=0, likelihood_subset=100)
    torch.manual_seed(0)
    gan = GAN(data_shape=(2,), num_levels=0, num_classes=8, ema_decay=0.0)
    r = evaluate(gan, dm, cfg, progress=False)
    assert r["mode_coverage"]["num_modes"] == 8 and r["mode_coverage"]["modes_recovered"] < 8
    assert r["fid"]["available"] is False and r["nll_nats"]["available"] is False
    flow = RealNVP(data_shape=(2,), num_levels=0, num_classes=8)
    r = evaluate(flow, dm, cfg, progress=False)
    nll = r["nll_nats"]
    assert nll["n"] == 100 and nll["true_entropy_nats"] > 0
    assert nll["value"] > nll["true_entropy_nats"] - 4 * nll["stderr"]  # no model beats the true entropy


def test_fid_against_sampler_steps(digits, tmp_path):
    from genbench.models.ddpm import DDPM

    torch.manual_seed(0)
    model = DDPM(data_shape=(1, 8, 8), num_levels=17, num_classes=10, base_channels=8, channel_mults=(1, 2),
                 num_res_blocks=1, attention_resolutions=(), num_timesteps=20, sampling_steps=10,
                 sampler="ancestral")
    cfg = EvalConfig(num_samples=12, memorization_samples=0, likelihood_subset=8, sampler_steps_sweep=[2, 5])
    out = evaluate(model, digits, cfg, progress=False, feature_extractor=TinyExtractor(), cache_dir=str(tmp_path))
    sweep = out["fid_vs_steps"]
    assert [s["steps"] for s in sweep] == [2, 5] and all(s["n"] == 12 and s["fid"] >= 0 for s in sweep)
    assert sweep[0]["fid"] != sweep[1]["fid"]
    assert model.sampler_info()["steps"] == 10  # the configured sampler is restored afterwards
    with pytest.raises(NotImplementedError, match="no adjustable number of sampler steps"):
        PixelModel().set_sampling_steps(3)


def test_fid_does_not_depend_on_the_feature_batch_size(digits, tmp_path):
    kw = dict(progress=False, feature_extractor=TinyExtractor())
    base = dict(likelihood_subset=8, memorization_samples=0, sample_metrics=["fid", "kid"])
    a = evaluate(PixelModel(), digits, _cfg(feature_batch_size=64, **base), cache_dir=str(tmp_path / "a"), **kw)
    b = evaluate(PixelModel(), digits, _cfg(feature_batch_size=7, **base), cache_dir=str(tmp_path / "b"), **kw)
    assert a[N.FID]["feature_batch_size"] == 64 and b[N.FID]["feature_batch_size"] == 7
    assert a[N.FID]["value"] == pytest.approx(b[N.FID]["value"], rel=1e-6)
    assert a[N.FID_FLOOR]["value"] == pytest.approx(b[N.FID_FLOOR]["value"], rel=1e-6)
    assert a[N.KID]["value"] == pytest.approx(b[N.KID]["value"], rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="feature_batch_size must be >= 1"):
        EvalConfig(feature_batch_size=0)


def test_kid_subset_defaults_to_half_the_set_below_2000():
    cfg = EvalConfig()
    assert cfg.kid_subset(500) == 250 and cfg.kid_subset(2000) == 1000 and cfg.kid_subset(50000) == 1000
    assert EvalConfig(kid_subset_size=100).kid_subset(500) == 100
    assert EvalConfig(kid_subset_size=1000).kid_subset(500) == 500  # clipped to the set
    with pytest.raises(ValueError, match="kid_subset_size must be >= 2"):
        EvalConfig(kid_subset_size=1)
