"""VAE: discrete decoder normalisation, the Gaussian KL, the ELBO <= IWAE ordering, diagnostics and the CLI."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genbench.data import GenDataModule
from genbench.distributions import (
    diag_normal_log_prob,
    discretized_logistic_log_likelihood,
    discretized_logistic_mixture_log_likelihood,
    standard_normal_log_prob,
)
from genbench.metrics.likelihood import bpd
from genbench.models.vae import VAE

REPO = Path(__file__).resolve().parents[1]
DIGITS = {"data_shape": (1, 8, 8), "num_levels": 17, "num_classes": 10}


def tiny_vae(**kwargs) -> VAE:
    args = {"latent_dim": 4, "channels": (8, 16), "num_res_blocks": 1, "num_mixtures": 3, **DIGITS, **kwargs}
    return VAE(**args)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    dm = GenDataModule("digits")
    dm.prepare_data()
    dm.setup()
    return dm.split("train")[0], dm.split("test")[0]


@pytest.fixture(scope="module")
def trained(digits) -> VAE:
    """A tiny VAE trained for 60 Adam steps on digits (a few seconds)."""
    torch.manual_seed(0)
    model = tiny_vae()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train, _ = digits
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        x = train[torch.randint(0, len(train), (128,), generator=g)]
        loss = model.training_step((x, None), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# ---------------------------------------------------------------- decoder distributions
def assert_sums_to_one(total: torch.Tensor) -> None:
    """Bin masses below 1e-5 are taken as density x bin width, which never exceeds the exact tail mass of a
    logistic ((h/s) <= sinh(h/s)): the total is 1 up to that conservative deficit, never above it."""
    assert float(total.max()) <= 1.0 + 1e-12
    assert float(total.min()) >= 1.0 - 2e-5


@pytest.mark.parametrize("levels", [17, 256])
def test_logistic_mixture_sums_to_one_over_levels(levels):
    g = torch.Generator().manual_seed(levels)
    n, k = 3, 4
    logits = torch.randn(n, k, 5, generator=g, dtype=torch.float64)
    means = 1.5 * torch.randn(n, k, 5, generator=g, dtype=torch.float64)
    log_scales = torch.empty(n, k, 5, dtype=torch.float64).uniform_(-7.0, 0.5, generator=g)
    x_all = torch.arange(levels, dtype=torch.float64) * (2.0 / (levels - 1)) - 1.0
    probs = torch.stack(
        [
            discretized_logistic_mixture_log_likelihood(
                torch.full((n, 5), v.item(), dtype=torch.float64), logits, means, log_scales, levels
            ).exp()
            for v in x_all
        ]
    )
    assert_sums_to_one(probs.sum(0))


def test_mixture_of_one_is_the_discretized_logistic():
    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, 256, (4, 6), generator=g).double() * 2 / 255) - 1
    means, log_scales = (
        torch.randn(4, 1, 6, generator=g).double(),
        -3 * torch.rand(4, 1, 6, generator=g).double(),
    )
    mix = discretized_logistic_mixture_log_likelihood(
        x, torch.randn(4, 1, 6).double(), means, log_scales, 256
    )
    single = discretized_logistic_log_likelihood(x, means[:, 0], log_scales[:, 0], 256)
    torch.testing.assert_close(mix, single)
    with pytest.raises(ValueError, match="share one shape"):
        discretized_logistic_mixture_log_likelihood(x, means, means[:, :, :3], log_scales, 256)


@pytest.mark.parametrize("decoder", ["logistic_mixture", "categorical"])
def test_model_decoder_probabilities_sum_to_one(decoder):
    torch.manual_seed(0)
    model = tiny_vae(decoder=decoder)
    with torch.no_grad():
        out = model.decoder(torch.randn(5, 4)) * 3.0  # sharpen a little: exercises the tails
    log_probs = model.decoder_level_log_probs(out)
    assert log_probs.shape == (5, 17, 1, 8, 8) and log_probs.dtype == torch.float64
    assert_sums_to_one(log_probs.exp().sum(1))
    if decoder == "categorical":  # a softmax: exact
        torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(5, 1, 8, 8, dtype=torch.float64))
    # the per-level table agrees with the log-probability of given pixels
    x = torch.randint(0, 17, (5, 1, 8, 8), dtype=torch.uint8)
    picked = log_probs.gather(1, x.long().unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(model.decoder_log_prob(x, out, torch.float64), picked)


def test_decoder_draws_follow_the_decoder_probabilities():
    """Empirical frequencies of pixel draws match p(x|z) for one fixed z (both decoders)."""
    for decoder in ("logistic_mixture", "categorical"):
        torch.manual_seed(1)
        model = tiny_vae(decoder=decoder)
        with torch.no_grad():
            out = model.decoder(torch.randn(1, 4)).expand(4000, -1, -1, -1)
        draws = model.decoder_pixels(out, draw=True, generator=torch.Generator().manual_seed(0))
        freq = torch.nn.functional.one_hot(draws[:, 0, 0, :2].long(), 17).double().mean(0)  # two pixels
        probs = model.decoder_level_log_probs(out[:1]).exp()[0, :, 0, 0, :2].T
        assert (freq - probs).abs().max() < 0.04, decoder


# ---------------------------------------------------------------- KL and the bounds
def test_gaussian_kl_matches_closed_form_and_monte_carlo():
    torch.manual_seed(0)
    model = tiny_vae()
    x = torch.randint(0, 17, (3, 1, 8, 8), dtype=torch.uint8)
    terms = model.elbo_terms(x, torch.float64)
    mean, logvar = (t.double().detach() for t in model.encode(x))
    closed = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)
    torch.testing.assert_close(terms["kl_per_latent"].detach(), closed)
    # Monte Carlo E_q[log q(z|x) - log p(z)] with the densities used by the IWAE bound
    z = mean + (0.5 * logvar).exp() * torch.randn(200_000, *mean.shape, dtype=torch.float64)
    mc = (diag_normal_log_prob(z, mean, logvar) - standard_normal_log_prob(z)).mean(0)
    torch.testing.assert_close(mc, closed.sum(1), atol=0.02, rtol=0)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k(trained, digits):
    _, test = digits
    x = test[:300]
    g = torch.Generator().manual_seed(0)
    elbo = trained.elbo(x)
    bounds = {k: trained.log_likelihood(x, iw_samples=k, generator=g) for k in (1, 4, 16, 64)}
    for b in [elbo, *bounds.values()]:
        assert b.dtype == torch.float64 and b.shape == (300,) and torch.isfinite(b).all()

    def se(d: torch.Tensor) -> float:
        return float(d.std() / math.sqrt(len(d)))

    # k = 1 estimates the ELBO itself (unbiased), only with a different estimator
    d = bounds[1] - elbo
    assert abs(float(d.mean())) < 4 * se(d) + 1e-3
    ks = sorted(bounds)
    for k_lo, k_hi in zip(ks, ks[1:], strict=False):
        d = bounds[k_hi] - bounds[k_lo]
        assert float(d.mean()) > -3 * se(d), (k_lo, k_hi)
    d = bounds[64] - elbo
    assert float(d.mean()) > 0 and float(d.mean()) > 3 * se(d)
    # learned something: well below the uniform model's log2(17) bits/dim
    assert float(bpd(-bounds[64].mean(), 64)) < math.log2(17) - 1.0


def test_log_likelihood_chunking_does_not_change_the_bound(trained, digits):
    x = digits[1][:10]
    a = trained.log_likelihood(x, iw_samples=12, generator=torch.Generator().manual_seed(3))
    trained.hparams.iw_batch_size = 20  # 2 samples of 10 images per decoder call
    try:
        b = trained.log_likelihood(x, iw_samples=12, generator=torch.Generator().manual_seed(3))
    finally:
        trained.hparams.iw_batch_size = 512
    torch.testing.assert_close(a, b)


def test_free_bits_and_kl_warmup_shape_the_training_loss(digits):
    x = digits[0][:64]
    torch.manual_seed(0)
    reference = tiny_vae()
    torch.manual_seed(0)
    terms = reference.elbo_terms(x)
    kl, recon = terms["kl_per_latent"].detach(), terms["recon_nats"].detach().mean()
    expected = {
        "plain": (recon + kl.sum(1).mean()) / 64,
        "free_bits": (recon + kl.mean(0).clamp(min=5.0).sum()) / 64,  # each latent counts >= 5 nats
        "warmup": (recon + 0.1 * kl.sum(1).mean()) / 64,  # step 0 of a 10-step warm-up: KL weight 0.1
    }
    options = {"plain": {}, "free_bits": {"free_bits_nats": 5.0}, "warmup": {"kl_warmup_steps": 10}}
    for name, kwargs in options.items():
        model = tiny_vae(**kwargs)
        model.load_state_dict(reference.state_dict())
        torch.manual_seed(0)  # the same reparameterisation noise
        loss = model.training_step((x, None), 0).detach()
        assert float(loss) == pytest.approx(float(expected[name]), rel=1e-5), name
    assert float(expected["free_bits"]) > float(expected["plain"]) > float(expected["warmup"])
    assert tiny_vae(kl_warmup_steps=10).kl_weight() == pytest.approx(0.1)


# ---------------------------------------------------------------- sampling and diagnostics
def test_sample_is_uint8_reproducible_and_restores_mode(trained):
    trained.train()
    a = trained.sample(6, generator=torch.Generator().manual_seed(5))
    b = trained.sample(6, generator=torch.Generator().manual_seed(5))
    assert trained.training  # restored
    trained.eval()
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 8, 8) and int(a.max()) <= 16
    assert torch.equal(a, b)
    assert trained.sampler_info()["pixels"] == "decoder_draws" and trained.sampler_info()["eval_mode"]
    info = trained.likelihood_info()
    assert info["kind"] == "bound" and info["estimator"] == "iwae" and info["k"] == trained.hparams.iw_samples
    assert set(trained.likelihood_variants()) == {"elbo"}


def test_decoder_modes_are_a_sample_variant_of_the_declared_draws(trained):
    """The main sampler stays the declared one; the variant block draws modes and restores draws."""
    assert set(trained.sample_variants()) == {"decoder_modes"}
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    draws = trained.sample(6, generator=gen())
    with trained.sample_variant("decoder_modes"):
        modes = trained.sample(6, generator=gen())
        assert trained.sampler_info()["pixels"] == "decoder_modes"
    z = torch.randn((6, trained.latent_dim), generator=gen())
    with torch.no_grad():
        expected = trained.decoder_pixels(trained.decoder(z), False, None)
    assert torch.equal(modes, expected.cpu()) and not torch.equal(modes, draws)
    assert trained.sampler_info()["pixels"] == "decoder_draws"
    assert torch.equal(trained.sample(6, generator=gen()), draws)
    with pytest.raises(KeyError, match="decoder_draws"):
        with trained.sample_variant("decoder_draws"):
            pass


def test_diagnostics(trained, digits):
    x = digits[1][:8]
    rec = trained.reconstructions(x)
    assert rec.dtype == torch.uint8 and rec.shape == x.shape
    # reconstructions from the posterior mean are closer to x than to other images
    err_own = (rec.float() - x.float()).abs().mean()
    err_other = (rec.float() - x.roll(1, 0).float()).abs().mean()
    assert err_own < err_other
    path = trained.interpolate(x[:4], x[4:], steps=5)
    assert path.dtype == torch.uint8 and path.shape == (4, 5, 1, 8, 8)
    assert torch.equal(path[:, 0], rec[:4]) and torch.equal(path[:, -1], rec[4:])
    units = trained.active_units(digits[1])
    assert 1 <= units <= 4
    # latents whose posterior mean ignores x are inactive
    frozen = copy.deepcopy(trained)
    with torch.no_grad():
        frozen.encoder.head.weight[: frozen.latent_dim].zero_()
    assert frozen.active_units(digits[1]) == 0


def test_input_checks():
    model = tiny_vae()
    with pytest.raises(TypeError, match="uint8"):
        model.log_likelihood(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="outside 0..16"):
        model.log_likelihood(torch.full((2, 1, 8, 8), 17, dtype=torch.uint8))
    with pytest.raises(ValueError, match="decoder must be one of"):
        tiny_vae(decoder="gaussian")
    with pytest.raises(ValueError, match="discrete dataset"):
        VAE(data_shape=(1, 8, 8), num_levels=0)
    with pytest.raises(ValueError, match="image data"):
        VAE(data_shape=(2,), num_levels=0)


# ---------------------------------------------------------------- the real CLI
def test_smoke_fit_through_cli_then_sample_and_bpd(tmp_path):
    cmd = [
        sys.executable, "-m", "genbench", "fit",
        "--config", "configs/trainer/default.yaml",
        "--config", "configs/data/mnist.yaml",
        "--config", "configs/model/vae.yaml",
        "--config", "configs/profile/smoke/vae.yaml",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny net: one thread (see one_thread)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, f"no checkpoint under {tmp_path}"
    model = VAE.load_from_checkpoint(ckpts[-1], weights_only=True)
    assert model.data_shape == (1, 28, 28) and model.num_levels == 256
    assert model.hparams.latent_dim == 8  # the smoke profile's override reached the model
    x = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.uint8 and x.shape == (4, 1, 28, 28)
    test_x = GenDataModule("mnist").split("test")[0][:8]
    ll = model.log_likelihood(test_x)
    bits = bpd(-ll, model.num_dims)
    assert ll.dtype == torch.float64 and torch.isfinite(ll).all()
    assert (bits > 0).all() and (bits < 8.5).all()
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    for name in ("train/kl_nats", "train/recon_nats", "val/elbo_bpd", "val/bpd", "val/active_units"):
        assert name in metrics
