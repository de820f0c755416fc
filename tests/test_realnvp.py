"""Real NVP: invertibility, exact log-determinants, likelihood accounting, toy2d fit and the CLI path."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import genbench.models.realnvp as realnvp_module
from genbench.data.toy2d import make_toy2d
from genbench.metrics.likelihood import bpd
from genbench.models.realnvp import RealNVP
from genbench.nets.coupling import (
    ActNorm,
    AffineCoupling,
    MLPCouplingFlow,
    RealNVPFlow,
    checkerboard_mask,
    squeeze,
    unsqueeze,
)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def _randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Move every parameter away from its identity initialisation so that each layer does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _trained_like_flow(flow: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    flow.train()
    flow(x)  # ActNorm data-dependent initialisation
    _randomize(flow)
    return flow.eval()


def test_squeeze_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y = squeeze(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(y[0, :4, 0, 0], torch.tensor([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))
    assert torch.equal(unsqueeze(y), x)
    with pytest.raises(ValueError, match="even"):
        squeeze(torch.zeros(1, 1, 7, 7))


def test_checkerboard_mask_alternates():
    m0 = checkerboard_mask(3, 4, 0)[0, 0]
    assert m0.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert torch.equal(checkerboard_mask(3, 4, 1)[0, 0], 1 - m0)


@pytest.mark.parametrize("shape,scales", [((1, 28, 28), 3), ((1, 8, 8), 3), ((3, 32, 32), 2)])
def test_flow_inverse_of_forward_float32(shape, scales):
    torch.manual_seed(0)
    x = torch.randn(3, *shape)
    flow = _trained_like_flow(RealNVPFlow(*shape, num_scales=scales, mid_channels=8, num_blocks=1), x)
    with torch.no_grad():
        z, logdet = flow(x)
        x_back = flow.inverse(z)
    assert z.shape == (3, math.prod(shape)) and logdet.shape == (3,)
    assert logdet.abs().max() > 1.0  # the layers are not the identity
    assert (x_back - x).abs().max() < 1e-4


def test_mlp_flow_inverse_of_forward():
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    flow = _trained_like_flow(MLPCouplingFlow(2, num_couplings=6, hidden=16), x)
    with torch.no_grad():
        z, _ = flow(x)
        assert (flow.inverse(z) - x).abs().max() < 1e-4


@pytest.mark.parametrize("mask_type", ["checkerboard", "channel"])
def test_coupling_logdet_matches_autograd(mask_type):
    torch.manual_seed(0)
    layer = AffineCoupling(4, mask_type, parity=1, mid_channels=6, num_blocks=1).double()
    _randomize(layer)
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, 4, 2, 2))[0].flatten(), x.flatten())
    _, logdet = layer(x)
    assert torch.allclose(logdet[0], torch.linalg.slogdet(jac)[1], atol=1e-9)


def test_multiscale_logdet_matches_autograd_on_1x4x4():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    flow = _trained_like_flow(RealNVPFlow(1, 4, 4, num_scales=2, mid_channels=6, num_blocks=1).double(), x)
    x0 = x[:1]
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 1, 4, 4))[0].flatten(), x0.flatten())
    sign, logabsdet = torch.linalg.slogdet(jac)
    _, logdet = flow(x0)
    assert sign != 0 and abs(float(logabsdet)) > 0.5
    assert torch.allclose(logdet[0], logabsdet, atol=1e-8)


def test_mlp_flow_logdet_matches_autograd():
    torch.manual_seed(0)
    x = torch.randn(32, 2, dtype=torch.float64)
    flow = _trained_like_flow(MLPCouplingFlow(2, num_couplings=4, hidden=8).double(), x)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 2))[0].flatten(), x[0])
    assert torch.allclose(flow(x[:1])[1][0], torch.linalg.slogdet(jac)[1], atol=1e-10)


def test_actnorm_data_dependent_init_then_fixed():
    torch.manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(256, 4, 5, 5)
    norm = ActNorm(4)
    y, logdet = norm(x)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (y.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
    assert torch.allclose(logdet, torch.full((256,), 25 * norm.log_scale.sum().item()))
    y2, _ = norm(x + 1.0)  # initialised once: now a fixed affine map
    assert torch.allclose(y2 - y, torch.exp(norm.log_scale).view(1, -1, 1, 1).expand_as(y), atol=1e-5)
    assert torch.allclose(norm.inverse(y), x, atol=1e-4)


def test_untrained_flow_is_the_identity():
    model = RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=3, mid_channels=8).eval()
    y = torch.randn(4, 1, 8, 8)
    z, logdet = model.flow(y)
    assert torch.equal(z.sort(1).values, y.flatten(1).sort(1).values)  # a permutation (squeeze, factor-out)
    assert torch.equal(logdet, torch.zeros(4))


@pytest.mark.parametrize("alpha", [0.0, 0.05])
@pytest.mark.parametrize("levels,shape", [(256, (1, 28, 28)), (17, (1, 8, 8))])
def test_identity_flow_with_uniform_density_gives_closed_form_bpd(monkeypatch, alpha, levels, shape):
    """An identity flow whose base is the standard logistic is, through the logit, the uniform density on
    the (alpha-shrunk) unit cube: bits/dim is exactly log2(L) - log2(1 - 2 alpha) (8 for MNIST, alpha=0)."""

    def logistic_log_prob(z):
        return (-z - 2.0 * F.softplus(-z)).flatten(1).sum(1)

    monkeypatch.setattr(realnvp_module, "standard_normal_log_prob", logistic_log_prob)
    model = RealNVP(data_shape=shape, num_levels=levels, num_scales=2, mid_channels=4, alpha=alpha).eval()
    x = torch.randint(0, levels, (16, *shape), dtype=torch.uint8)
    bits = bpd(-model.log_likelihood(x), math.prod(shape))
    expected = math.log2(levels) - math.log2(1.0 - 2.0 * alpha)
    assert torch.allclose(bits, torch.full_like(bits, expected), atol=1e-5)
    iw_bits = bpd(-model.iw_dequant_log_likelihood(x, k=3), math.prod(shape))  # a constant density: K is moot
    assert torch.allclose(iw_bits, torch.full_like(iw_bits, expected), atol=1e-5)
    if alpha == 0.0 and levels == 256:
        assert abs(expected - 8.0) < 1e-12


def test_log_likelihood_contract_and_reproducibility():
    model = RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=3, mid_channels=8, dequant_draws=2)
    x = torch.randint(0, 17, (6, 1, 8, 8), dtype=torch.uint8)
    model.train()
    model.flow(torch.randn(32, 1, 8, 8))  # ActNorm init
    _randomize(model.flow, std=0.1)
    ll = model.log_likelihood(x)
    assert ll.dtype == torch.float64 and ll.shape == (6,) and torch.isfinite(ll).all()
    assert torch.equal(ll, model.log_likelihood(x))  # seeded dequantization
    assert model.training  # the previous mode is restored
    info = model.likelihood_info()
    # exact for the dequantized continuous density only: on the discrete pixels a bound
    assert info["kind"] == "bound" == model.likelihood_kind and info["draws"] == 2
    assert "Jensen" in info["dequantization"] and "dequantized" in info["exact_for"]
    assert "discrete" in info["bound_on"] and info["iw_dequant_K"] is None and model.likelihood_variants() == {}
    assert RealNVP(data_shape=(2,), num_levels=0, num_classes=8).likelihood_info()["kind"] == "exact"
    with pytest.raises(TypeError, match="uint8"):
        model.log_likelihood(x.float())
    with pytest.raises(ValueError, match="outside"):
        model.log_likelihood(torch.full((1, 1, 8, 8), 17, dtype=torch.uint8))


def test_importance_weighted_dequantization_tightens_the_bound():
    """log-mean-exp over K dequantization draws: never looser than the Jensen average of the same draws, and
    on average tighter than one draw (both bound the discrete NLL from above)."""
    k = 16
    model = RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=2, mid_channels=8, dequant_draws=k,
                    iw_dequant_draws=k)
    x = torch.randint(0, 17, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    model.train()
    model.flow(torch.randn(64, 1, 8, 8))  # ActNorm init
    _randomize(model.flow, std=0.1)
    (name, fn), = model.likelihood_variants().items()
    assert name == "iw_dequant" and model.likelihood_variant_info(name)["K"] == k
    iw_nll = -fn(x)
    jensen_nll = -model.log_likelihood(x)  # the mean over the same K seeded draws
    assert iw_nll.dtype == torch.float64 and iw_nll.shape == (64,)
    assert (iw_nll <= jensen_nll + 1e-9).all()
    single = []
    for seed in range(8):  # the single-draw bound's expectation, over independent dequantization seeds
        one = RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=2, mid_channels=8, likelihood_seed=100 + seed)
        one.load_state_dict(model.state_dict())
        single.append(-one.log_likelihood(x))
    single_mean = torch.stack(single).mean()
    gap = single_mean - iw_nll.mean()
    assert gap > 0 and gap > 4 * float(torch.stack(single).mean(0).std() / math.sqrt(64))
    assert model.likelihood_info()["iw_dequant_K"] == k
    with pytest.raises(ValueError, match="iw_dequant needs"):
        model.iw_dequant_log_likelihood(x, k=0)


def test_sample_contract_temperature_and_nonfinite_count():
    model = RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=3, mid_channels=8, temperature=0.7)
    model.train()
    model.flow(torch.randn(32, 1, 8, 8))
    _randomize(model.flow, std=0.1)
    s1 = model.sample(5, torch.Generator().manual_seed(3))
    s2 = model.sample(5, torch.Generator().manual_seed(3))
    assert s1.dtype == torch.uint8 and s1.shape == (5, 1, 8, 8) and int(s1.max()) < 17
    assert torch.equal(s1, s2) and model.training
    assert model.sample(0).shape == (0, 1, 8, 8)
    info = model.sampler_info()
    assert info["temperature"] == 0.7 and info["nonfinite_samples_clamped"] == 0
    # below temperature 1, the model's own distribution is scored beside it as a sample variant
    assert set(model.sample_variants()) == {"temperature_1"}
    with model.sample_variant("temperature_1"):
        assert model.sampler_info()["temperature"] == 1.0
        t1 = model.sample(5, torch.Generator().manual_seed(3))
    assert model.temperature == 0.7 and not torch.equal(t1, s1)
    assert RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=3, mid_channels=8).sample_variants() == {}
    with torch.no_grad():  # force an overflow: the samples stay valid and the count records it
        model.flow.scales[0].in_layers[1].log_scale.fill_(-200.0)
    s3 = model.sample(4)
    assert s3.dtype == torch.uint8 and int(s3.max()) < 17
    assert model.sampler_info()["nonfinite_samples_clamped"] == 4


def test_l2_regularisation_acts_on_weight_norm_scales_only():
    model = RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=2, mid_channels=4, l2_scale=5e-5)
    optimizer = model.configure_optimizers()["optimizer"]
    decayed, other = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 5e-5 and other["weight_decay"] == 0.0
    assert decayed["params"] and all(names[id(p)].endswith("weight_g") for p in decayed["params"])
    assert sum(p.numel() for g in (decayed, other) for p in g["params"]) == model.num_parameters()


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        RealNVP(data_shape=(1, 28, 28), num_scales=4)
    with pytest.raises(ValueError, match="temperature"):
        RealNVP(temperature=0.0)


def _fit_toy2d(name: str, steps: int, seed: int = 0) -> tuple[float, float, float]:
    """Train the 2-D flow; return its test NLL, the true entropy and the NLL of the best Gaussian (nats)."""
    torch.manual_seed(seed)
    density = make_toy2d(name)
    train, _ = density.sample(20_000, torch.Generator().manual_seed(0))
    test, _ = density.sample(5_000, torch.Generator().manual_seed(1))
    model = RealNVP(data_shape=(2,), num_levels=0, num_classes=density.num_classes, mlp_couplings=8, mlp_hidden=64,
                    lr=1e-2, warmup_steps=50)
    optimizer = model.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        loss, _ = model._loss(train[torch.randint(0, len(train), (256,), generator=g)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    nll = float(-model.log_likelihood(test).mean())
    cov = torch.cov(train.double().T)
    gaussian_nll = 0.5 * float(torch.logdet(2 * math.pi * math.e * cov))
    return nll, density.entropy()[0], gaussian_nll


def test_toy2d_nll_approaches_true_entropy():
    """600 steps on two_moons: the test NLL (nats) lies within 0.6 nats above the true entropy (1.415; measured
    gap 0.45) and clearly below the best Gaussian (2.71), so the couplings have learnt the non-Gaussian shape.
    It never falls below the entropy by more than the Monte Carlo error of the 5000 test points."""
    nll, entropy, gaussian_nll = _fit_toy2d("two_moons", steps=600)
    assert entropy - 0.05 < nll < entropy + 0.6, (nll, entropy)
    assert nll < gaussian_nll - 0.5, (nll, gaussian_nll)


@pytest.mark.slow
def test_toy2d_nll_close_to_true_entropy_after_longer_training():
    """3000 steps (1-2 minutes): two_moons within 0.2 nats of its entropy (measured gap 0.11); eight_gaussians,
    whose well-separated modes affine couplings fit slowly, within 0.6 nats (measured 0.44; best Gaussian 3.54)."""
    for name, tolerance in (("two_moons", 0.2), ("eight_gaussians", 0.6)):
        nll, entropy, _ = _fit_toy2d(name, steps=3000)
        assert entropy - 0.05 < nll < entropy + tolerance, (name, nll, entropy)


def test_toy2d_sample_contract():
    model = RealNVP(data_shape=(2,), num_levels=0, num_classes=8, mlp_couplings=2, mlp_hidden=8)
    s = model.sample(7, torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32 and s.shape == (7, 2)
    assert model.likelihood_info()["units"].startswith("continuous")


def test_smoke_fit_sample_bpd_through_cli(tmp_path):
    cmd = [sys.executable, "-m", "genbench", "fit",
           "--config", "configs/trainer/default.yaml", "--config", "configs/data/mnist.yaml",
           "--config", "configs/model/realnvp.yaml", "--config", "configs/profile/smoke/realnvp.yaml",
           "--trainer.default_root_dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "no checkpoint written"
    model = RealNVP.load_from_checkpoint(ckpts[-1], weights_only=True, map_location="cpu")
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
    samples = model.sample(4, torch.Generator().manual_seed(0))
    assert samples.dtype == torch.uint8 and samples.shape == (4, 1, 28, 28)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    bits = bpd(-model.log_likelihood(x), 784)
    assert torch.isfinite(bits).all() and (bits > 0).all()
