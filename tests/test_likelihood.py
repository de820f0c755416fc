"""Likelihood helpers against closed forms."""

import math

import pytest
import torch

from genbench.data import transforms
from genbench.distributions import (
    discretized_gaussian_log_likelihood,
    discretized_logistic_log_likelihood,
    normal_kl,
)
from genbench.metrics.likelihood import bpd, discrete_nll_from_density, mean_and_stderr


def test_uniform_model_is_eight_bits_per_dim():
    # A uniform density on [0,1]^D of dequantized data: log p_v = 0 -> D log 256 nats -> 8 bpd.
    d = 784
    nll = discrete_nll_from_density(torch.zeros(5, dtype=torch.float64), 0.0, d, 256)
    assert torch.allclose(bpd(nll, d), torch.full((5,), 8.0, dtype=torch.float64), atol=1e-12)
    # The same density seen through the [-1,1] scaling: p_z = 2^-D, logdet = D log 2.
    v = torch.rand(5, d, dtype=torch.float64)
    z, logdet = transforms.scale_to_symmetric(v)
    log_pz = torch.full((5,), -d * math.log(2.0), dtype=torch.float64)
    assert torch.allclose(bpd(discrete_nll_from_density(log_pz, logdet, d, 256), d), torch.tensor(8.0, dtype=torch.float64))
    # 17 grey levels: log2(17) bits per dim.
    assert bpd(discrete_nll_from_density(torch.zeros(1), 0.0, 64, 17), 64).item() == pytest.approx(math.log2(17))


def test_bpd_rejects_bad_dims():
    with pytest.raises(ValueError, match="num_dims"):
        bpd(1.0, 0)


def test_normal_kl_closed_form():
    m = torch.randn(100, dtype=torch.float64)
    lv = torch.randn(100, dtype=torch.float64)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(100, dtype=torch.float64), atol=1e-12)
    # KL(N(1, 1) || N(0, 4)) = log(2) + (1 + 1)/(2*4) - 1/2
    expected = math.log(2.0) + 2.0 / 8.0 - 0.5
    f64 = dict(dtype=torch.float64)
    got = normal_kl(torch.tensor(1.0, **f64), torch.tensor(0.0, **f64), torch.tensor(0.0, **f64),
                    torch.tensor(math.log(4.0), **f64))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Monte Carlo agreement with torch.distributions
    p = torch.distributions.Normal(0.3, 0.7)
    q = torch.distributions.Normal(-0.2, 1.3)
    ref = torch.distributions.kl_divergence(p, q)
    ours = normal_kl(torch.tensor(0.3), torch.tensor(2 * math.log(0.7)), torch.tensor(-0.2), torch.tensor(2 * math.log(1.3)))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("fn", [discretized_gaussian_log_likelihood, discretized_logistic_log_likelihood])
@pytest.mark.parametrize("levels", [256, 17])
def test_discretized_probabilities_sum_to_one(fn, levels):
    torch.manual_seed(0)
    k = torch.arange(levels)
    x = transforms.to_model_space(k, levels, torch.float64)[:, None]  # [L, 1]
    means = torch.empty(1, 50, dtype=torch.float64).uniform_(-1.5, 1.5)
    log_scales = torch.empty(1, 50, dtype=torch.float64).uniform_(-7.0, 1.0)
    logp = fn(x.expand(levels, 50), means.expand(levels, 50), log_scales.expand(levels, 50), levels=levels)
    total = torch.logsumexp(logp, dim=0).exp()
    assert torch.allclose(total, torch.ones(50, dtype=torch.float64), atol=1e-6)
    assert (logp <= 1e-12).all()


def test_discretized_gaussian_matches_bin_mass():
    # An interior bin's probability is Phi(b) - Phi(a) of the Gaussian.
    levels = 256
    x = transforms.to_model_space(torch.tensor([100]), levels, torch.float64)
    mean, sd = torch.tensor([0.1], dtype=torch.float64), 0.3
    logp = discretized_gaussian_log_likelihood(x, mean, torch.log(torch.tensor([sd], dtype=torch.float64)), levels)
    n = torch.distributions.Normal(mean, sd)
    expected = n.cdf(x + 1 / 255) - n.cdf(x - 1 / 255)
    assert logp.exp().item() == pytest.approx(expected.item(), rel=1e-9)


def test_mean_and_stderr():
    m, se = mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)


def test_transforms_round_trip_and_logit_jacobian():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(transforms.to_pixels(transforms.to_model_space(x, 256), 256), x)
    v = transforms.dequantize(x, 256, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(transforms.quantize(v, 256), x)
    z, logdet = transforms.logit_transform(v, alpha=0.05)
    assert torch.allclose(transforms.inverse_logit_transform(z, 0.05), v, atol=1e-10)
    # the log-Jacobian of the elementwise logit equals the sum of log derivatives from autograd
    vv = v.flatten()[:10].clone().requires_grad_(True)
    zz, _ = transforms.logit_transform(vv[None], 0.05)
    grads = torch.autograd.grad(zz.sum(), vv)[0]
    _, ld = transforms.logit_transform(vv[None].detach(), 0.05)
    assert ld.item() == pytest.approx(torch.log(grads).sum().item(), rel=1e-9)
    assert logdet.shape == (1,)


def test_check_images_errors():
    with pytest.raises(TypeError, match="uint8"):
        transforms.check_images(torch.zeros(2, 1, 8, 8), (1, 8, 8), 17)
    with pytest.raises(ValueError, match="shape"):
        transforms.check_images(torch.zeros(2, 1, 7, 8, dtype=torch.uint8), (1, 8, 8), 17)
    with pytest.raises(ValueError, match="outside 0..16"):
        transforms.check_images(torch.full((2, 1, 8, 8), 17, dtype=torch.uint8), (1, 8, 8), 17)
