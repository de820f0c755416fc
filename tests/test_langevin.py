"""Langevin samplers, the predictor-corrector sampler, exact mixture scores and the sample divergences.

Tolerances are stated in standard errors of the sample statistic: the sample variance of N independent
draws of N(0, v) has standard error v sqrt(2 / N).
"""

import math

import pytest
import torch

from genbench.data.toy2d import EightGaussians
from genbench.diffusion import GaussianDiffusion, make_betas, samplers
from genbench.diffusion.exact_scores import GaussianMixtureMarginals
from genbench.diffusion.langevin import (
    annealed_langevin,
    mala,
    pc_network_evaluations,
    pc_sample,
    ula,
    ula_gaussian_moments,
)
from genbench.metrics.divergence import energy_distance, kl_to_target, knn_entropy_nats

CHAINS = 10_000


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- ULA / MALA
def test_ula_reaches_its_biased_variance_and_mala_removes_the_bias():
    var, h = 1.0, 0.5  # the bias is large: stationary variance 1 / (1 - 0.25) = 4/3
    biased = var / (1.0 - h / (2.0 * var))
    x0 = 2.0 * torch.randn(CHAINS, 1, generator=gen(0), dtype=torch.float64)  # start off target: N(0, 4)

    def log_prob(x):
        return -0.5 * (x**2).sum(1) / var

    def score(x):
        return -x / var

    x_ula = ula(score, x0, h, 100, gen(1))  # the AR(1) coefficient is 0.5: 100 steps forget the start
    se = biased * math.sqrt(2.0 / CHAINS)
    assert x_ula.var().item() == pytest.approx(biased, abs=4 * se)
    assert abs(x_ula.var().item() - var) > 10 * se  # the bias is resolved, not noise
    x_mala, acceptance = mala(log_prob, score, x0, h, 100, gen(2))
    assert x_mala.var().item() == pytest.approx(var, abs=4 * var * math.sqrt(2.0 / CHAINS))
    assert abs(x_mala.mean().item()) < 4 * math.sqrt(var / CHAINS)
    assert 0.5 < acceptance < 1.0  # proposals are rejected (else MALA would be ULA)


def test_ula_gaussian_moments_follow_the_recursion():
    var, h, n = 0.25, 0.1, 7
    a = 1.0 - h / var
    mean, variance = 3.0, 1.0
    for _ in range(n):
        mean, variance = a * mean, a * a * variance + 2 * h
    assert ula_gaussian_moments(var, h, n, 3.0, 1.0) == pytest.approx((mean, variance), rel=1e-12)
    assert ula_gaussian_moments(var, h, 10_000)[1] == pytest.approx(var / (1 - h / (2 * var)), rel=1e-12)
    with pytest.raises(ValueError, match="step size"):
        ula(lambda x: -x, torch.zeros(2, 1), 0.0, 3)


def test_annealed_langevin_ends_at_the_last_levels_ula_law():
    levels = [4.0, 1.0, 0.25]  # q_i = N(0, 1 + level)
    h = 0.05
    x = 3.0 * torch.randn(CHAINS, 1, generator=gen(3), dtype=torch.float64)
    x = annealed_langevin(lambda z, i: -z / (1.0 + levels[i]), levels, x, h, 200, gen(4))
    target = 1.0 + levels[-1]
    biased = target / (1.0 - h / (2.0 * target))
    assert x.var().item() == pytest.approx(biased, abs=4 * biased * math.sqrt(2.0 / CHAINS))


# ---------------------------------------------------------------------------------------------- exact scores
def test_mixture_score_is_the_gradient_of_the_closed_form_log_density():
    marginals = GaussianMixtureMarginals.from_mixture(EightGaussians())
    x = 2.0 * torch.randn(64, 2, generator=gen(5), dtype=torch.float64)
    for abar in (1.0, 0.9, 0.3, 1e-3):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(marginals.log_prob(xr, abar).sum(), xr)
        torch.testing.assert_close(marginals.score(x, abar), grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(marginals.log_prob(x, 1.0), EightGaussians().log_prob(x), rtol=1e-12, atol=1e-12)
    # q_t integrates to 1 (grid over [-6, 6]^2) and its draws have the mixture's second moment
    grid = torch.stack(torch.meshgrid(torch.linspace(-6, 6, 601, dtype=torch.float64),
                                      torch.linspace(-6, 6, 601, dtype=torch.float64), indexing="ij"), -1).reshape(-1, 2)
    assert float(marginals.log_prob(grid, 0.5).exp().sum() * 0.02**2) == pytest.approx(1.0, abs=1e-4)
    draws = marginals.sample(CHAINS, 0.5, gen(6))
    second = 0.5 * 4.0 + 2 * (0.5 * 0.15**2 + 0.5)  # abar |mu|^2 + D v_t
    assert float((draws**2).sum(1).mean()) == pytest.approx(second, rel=0.03)


def test_exact_eps_model_and_prior_use_the_schedule():
    marginals = GaussianMixtureMarginals.from_mixture(EightGaussians())
    d = GaussianDiffusion(make_betas("linear", 100), var_type="fixed_small")
    model = marginals.eps_model(d)
    x = torch.randn(5, 2, generator=gen(7), dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 90, 99])
    abar = d.alphas_cumprod[t]
    torch.testing.assert_close(d.score_from_eps(model(x, t), t), marginals.score(x, abar))
    short = d.respace(range(20))
    assert float(short.alphas_cumprod[-1]) == pytest.approx(float(d.alphas_cumprod[19]), rel=1e-12)
    prior = marginals.prior_sample(short, CHAINS, gen(8))
    a = float(d.alphas_cumprod[19])
    assert float((prior**2).sum(1).mean()) == pytest.approx(a * 4.0 + 2 * (a * 0.15**2 + 1 - a), rel=0.03)
    with pytest.raises(ValueError, match="fixed var_type"):
        marginals.eps_model(GaussianDiffusion(make_betas("linear", 100), var_type="learned_range"))


# ---------------------------------------------------------------------------------------------- samplers with the exact score
def _kl(x, data):
    return kl_to_target(x, data.log_prob(x))


def test_error_falls_with_steps_given_exact_score_and_prior():
    data = EightGaussians()
    marginals = GaussianMixtureMarginals.from_mixture(data)
    d = GaussianDiffusion(make_betas("linear", 1000), var_type="fixed_small")
    model = marginals.eps_model(d)
    kl = {}
    for k in (10, 100):
        process = samplers.respaced(d, k)
        g = gen(9)
        x = samplers.sde_sample(process, model, (4000, 2), generator=g, dtype=torch.float64, clip_denoised=False,
                                x_T=marginals.prior_sample(process, 4000, g))
        kl[k] = _kl(x, data)
    # measured (8000 samples): 3.9 nats at K = 10, 0.047 at K = 100; the estimator's floor is ~0.01
    assert kl[10] > 1.0 and kl[100] < 0.2 and kl[100] < kl[10] / 10


def test_pc_sampler_matches_the_target_and_its_corrector_helps():
    data = EightGaussians()
    marginals = GaussianMixtureMarginals.from_mixture(data)
    d = GaussianDiffusion(make_betas("linear", 1000), var_type="fixed_small")
    model = marginals.eps_model(d)
    process = samplers.respaced(d, 20)
    kw = dict(generator=None, dtype=torch.float64, clip_denoised=False)
    plain = samplers.sample(d, model, (4000, 2), "sde", 20, **{**kw, "generator": gen(10)})
    corrected = samplers.sample(d, model, (4000, 2), "pc", 20, pc_corrector_steps=2, **{**kw, "generator": gen(10)})
    ancestral_pc = pc_sample(process, model, (4000, 2), predictor="ancestral", corrector_steps=1, **{**kw, "generator": gen(10)})
    # measured: 0.80 nats without the corrector, 0.56 with two corrector steps per step; the estimator's sd
    # over fresh target samples of this size is 0.01 (test below), so 0.1 is a resolved gain
    assert _kl(corrected, data) < _kl(plain, data) - 0.1
    assert _kl(ancestral_pc, data) < 1.0
    assert pc_network_evaluations(20, 2) == 58
    with pytest.raises(ValueError, match="unknown pc predictor"):
        pc_sample(process, model, (4, 2), predictor="euler")


def test_samplers_start_from_a_given_x_T():
    d = GaussianDiffusion(make_betas("linear", 10), var_type="fixed_small")
    model = GaussianMixtureMarginals.from_mixture(EightGaussians()).eps_model(d)
    x_T = torch.randn(3, 2, generator=gen(11), dtype=torch.float64)
    a = samplers.sample(d, model, (3, 2), "ode", 10, dtype=torch.float64, clip_denoised=False, x_T=x_T)
    b = samplers.sample(d, model, (3, 2), "ode", 10, dtype=torch.float64, clip_denoised=False, x_T=x_T.clone())
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the ODE is deterministic given x_T
    with pytest.raises(ValueError, match="x_T has shape"):
        samplers.sample(d, model, (4, 2), "sde", 10, x_T=x_T)


# ---------------------------------------------------------------------------------------------- divergences
def test_knn_kl_and_energy_distance_against_closed_forms():
    x = torch.randn(8000, 2, generator=gen(12), dtype=torch.float64)
    assert knn_entropy_nats(x) == pytest.approx(1.0 + math.log(2 * math.pi), abs=0.03)  # N(0, I_2): 2.838 nats
    data = EightGaussians()
    floors = [_kl(data.sample(4000, gen(100 + i))[0].double(), data) for i in range(5)]
    # on the target itself the estimate is biased high (the k-NN entropy is low on the 0.15-wide modes):
    # measured 0.025-0.042 nats at 4000 samples, 0.019-0.030 at 8000
    assert 0.0 < sum(floors) / 5 < 0.05 and max(floors) - min(floors) < 0.04
    wide = math.sqrt(2.0) * x  # KL(N(0, 2I) || N(0, I)) = 2 * (1/2)(2 - 1 - log 2) = 0.307 nats
    log_q = -0.5 * (wide**2).sum(1) - math.log(2 * math.pi)
    assert kl_to_target(wide, log_q) == pytest.approx(1.0 - math.log(2.0), abs=0.03)
    y = torch.randn(2000, 2, generator=gen(13), dtype=torch.float64)
    assert abs(energy_distance(x[:2000], y)) < 0.005
    shifted = energy_distance(x[:2000] + torch.tensor([1.0, 0.0], dtype=torch.float64), y)
    # closed form 2 sqrt(2) (E|N(delta / sqrt(2), I)| - E|N(0, I)|) = 0.4298, with the Rice mean of |N(mu, I_2)|
    assert shifted == pytest.approx(0.4298, abs=0.03)


# ---------------------------------------------------------------------------------------------- DDPM dispatch
def test_ddpm_samples_with_pc_and_records_it():
    from test_ddpm import tiny

    model = tiny(sampler="pc", sampling_steps=4, pc_corrector_steps=2, pc_snr=0.1)
    x = model.sample(3, generator=gen(14))
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.uint8
    assert torch.equal(x, model.sample(3, generator=gen(14)))
    info = model.sampler_info()
    assert info["sampler"] == "pc" and info["predictor"] == "sde" and info["corrector_steps"] == 2 and info["snr"] == 0.1
    assert info["network_evaluations"] == 4 + 2 * 3
    assert tiny(sampler="pc", pc_predictor="ancestral").sample(2).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown pc_predictor 'euler'"):
        tiny(sampler="pc", pc_predictor="euler")
    with pytest.raises(ValueError, match="pc_snr > 0"):
        tiny(sampler="pc", pc_snr=0.0)


@pytest.mark.slow
def test_make_bench_ddpm_with_the_pc_sampler(tmp_path):
    from test_bench import bench

    from genbench.bench.record import load_records

    out = bench(tmp_path, "ddpm", "--", "--model.init_args.sampler=pc", "--model.init_args.pc_corrector_steps=2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (rec,) = load_records(tmp_path / "results")
    sampler = rec.model_info["sampler"]
    assert sampler["sampler"] == "pc" and sampler["corrector_steps"] == 2 and sampler["predictor"] == "sde"
    assert sampler["network_evaluations"] == 5 + 2 * 4  # the smoke profile's 5 steps
    assert rec.metrics["fid"]["value"] >= 0
