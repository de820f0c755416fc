"""Closed-form checks of genbench.diffusion: schedules, q marginals, posteriors, the bound and the samplers.

The reference model is exact: for Gaussian data x_0 ~ N(mu, s^2 I) (model space), q(x_t) is Gaussian and
the optimal eps-predictor is eps*(x_t, t) = (x_t - sqrt(abar_t) mu) sqrt(1 - abar_t) / (abar_t s^2 + 1 - abar_t).
The reverse variance Var(x_{t-1} | x_t) = beta~_t + c1_t^2 Var(x_0 | x_t) is known too and lies inside the
learned range [beta~_t, beta_t], so a learned-range model can represent the exact reverse process. The data
fed to the bound are those Gaussian draws discretized to 256 levels; their true discrete NLL is the entropy
of the discretized Gaussian, computed exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genbench.diffusion import GaussianDiffusion, make_betas, samplers, space_timesteps
from genbench.diffusion.gaussian_diffusion import log_strata

MU, S, LEVELS = 0.1, 0.3, 256
SHAPE = (1, 4, 4)
D = math.prod(SHAPE)
# The exact bound of the exact reverse process exceeds the true discrete NLL by 0.021 bpd here (measured:
# the continuous-data predictor is not optimal for the discretized data at the smallest t, and L_0 is
# one Gaussian bin); fixed_large variances add ~0.12 bpd more.
TIGHT_GAP_BPD = 0.05
FIXED_LARGE_GAP_BPD = 0.25


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


class OptimalGaussian(nn.Module):
    """The exact eps-predictor (and, for learned_range, the exact reverse variance) for N(mu, s^2) data."""

    def __init__(self, diffusion: GaussianDiffusion, learned: bool = False) -> None:
        super().__init__()
        self.d, self.learned = diffusion, learned

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        view = (-1, 1, 1, 1)
        abar = self.d.alphas_cumprod[t].view(view).to(x_t.dtype)
        sigma2 = 1.0 - abar
        denom = abar * S**2 + sigma2
        eps = (x_t - abar.sqrt() * MU) * sigma2.sqrt() / denom
        if not self.learned:
            return eps
        var = self.d.posterior_variance[t].view(view) + self.d.posterior_mean_coef1[t].view(view) ** 2 * S**2 * sigma2 / denom
        lo = self.d.posterior_log_variance_clipped[t].view(view)
        hi = torch.log(self.d.betas[t]).view(view)
        frac = (torch.log(var) - lo) / (hi - lo)
        return torch.cat([eps, (2.0 * frac - 1.0).expand_as(x_t).to(x_t.dtype)], dim=1)


def discretized_gaussian_data(n: int, seed: int) -> torch.Tensor:
    z = MU + S * torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    k = torch.round((z + 1.0) * (LEVELS - 1) / 2.0).clamp(0, LEVELS - 1)
    return k * 2.0 / (LEVELS - 1) - 1.0


def true_discrete_nll_nats() -> float:
    """D times the entropy of N(MU, S^2) discretized to the bins of LEVELS levels (open edge bins)."""
    normal = torch.distributions.Normal(torch.tensor(MU, dtype=torch.float64), torch.tensor(S, dtype=torch.float64))
    centers = torch.arange(LEVELS, dtype=torch.float64) * 2.0 / (LEVELS - 1) - 1.0
    upper, lower = normal.cdf(centers + 1.0 / (LEVELS - 1)), normal.cdf(centers - 1.0 / (LEVELS - 1))
    upper[-1], lower[0] = 1.0, 0.0
    p = (upper - lower)[upper > lower]
    return float(-(p * p.log()).sum()) * D


def diffusion(var_type: str = "fixed_large", **kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(make_betas("linear", 1000), var_type=var_type, num_levels=LEVELS, **kwargs)


def to_bpd(nats: float) -> float:
    return nats / (D * math.log(2.0))


# ---------------------------------------------------------------------------------------------- schedules
def test_schedules_are_float64_and_match_their_definitions():
    lin = make_betas("linear", 1000)
    assert lin.dtype == torch.float64 and lin.shape == (1000,)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    cos = make_betas("cosine", 1000)
    abar = torch.cumprod(1.0 - cos, 0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abar[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert cos.max().item() <= 0.999
    steps = space_timesteps(1000, 50)
    assert steps[0] == 0 and steps[-1] == 999 and len(steps) == 50
    with pytest.raises(ValueError, match="unknown beta schedule"):
        make_betas("quadratic", 10)


def test_buffers_are_float64_and_respacing_keeps_abar():
    d = diffusion()
    assert all(b.dtype == torch.float64 for n, b in d.named_buffers() if n != "timestep_map")
    kept = space_timesteps(1000, 10)
    r = d.respace(kept)
    assert r.num_timesteps == 10 and torch.equal(r.timestep_map, kept)
    torch.testing.assert_close(r.alphas_cumprod, d.alphas_cumprod[kept], rtol=1e-12, atol=0)


def test_log_strata_partition_the_kl_steps():
    for T, K in [(1000, 16), (1000, 1), (10, 16), (1000, 64), (2, 3)]:
        edges = log_strata(T, K)
        assert edges[0] == 1 and edges[-1] == T
        assert all(b > a for a, b in zip(edges[:-1], edges[1:], strict=True))
        assert len(edges) - 1 == min(K, T - 1)


# ---------------------------------------------------------------------------------------------- q
def test_q_sample_marginals():
    d = diffusion()
    n = 20000
    gen = torch.Generator().manual_seed(0)
    for step in (0, 100, 500, 999):
        t = torch.full((n,), step, dtype=torch.int64)
        x0 = MU + S * torch.randn((n, 1), generator=gen, dtype=torch.float64)
        x_t = d.q_sample(x0, t, torch.randn((n, 1), generator=gen, dtype=torch.float64))
        abar = d.alphas_cumprod[step].item()
        assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * MU, abs=4 * math.sqrt(1 / n))
        assert x_t.var().item() == pytest.approx(abar * S**2 + 1 - abar, rel=0.04)
        # conditional on one x_0: N(sqrt(abar) x_0, 1 - abar)
        mean, var, log_var = d.q_mean_variance(torch.full((1, 1), 0.5, dtype=torch.float64), t[:1])
        assert mean.item() == pytest.approx(math.sqrt(abar) * 0.5) and var.item() == pytest.approx(1 - abar)
        assert log_var.item() == pytest.approx(math.log(1 - abar))


def test_posterior_matches_brute_force_gaussian_product():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), evaluated on a fine grid."""
    d = diffusion()
    x0, x_t = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.2]], dtype=torch.float64)
    for step in (1, 10, 300, 999):
        beta, abar_prev = d.betas[step].item(), d.alphas_cumprod[step - 1].item()
        m_prev, v_prev = math.sqrt(abar_prev) * 0.3, 1 - abar_prev
        sd = math.sqrt(min(v_prev, beta))
        grid = torch.linspace(m_prev - 12 * sd - 2, m_prev + 12 * sd + 2, 400001, dtype=torch.float64)
        log_w = -((-0.2 - math.sqrt(1 - beta) * grid) ** 2) / (2 * beta) - (grid - m_prev) ** 2 / (2 * v_prev)
        w = torch.exp(log_w - log_w.max())
        w = w / w.sum()
        mean_bf = float((w * grid).sum())
        var_bf = float((w * (grid - mean_bf) ** 2).sum())
        mean, var, _ = d.q_posterior_mean_variance(x0, x_t, torch.tensor([step]))
        assert mean.item() == pytest.approx(mean_bf, abs=1e-6 + 1e-6 * abs(mean_bf))
        assert var.item() == pytest.approx(var_bf, rel=1e-4)


def test_parametrizations_agree():
    """eps, x_0 and v outputs that encode the same prediction give the same reverse step."""
    d_eps, d_x0, d_v = (diffusion("fixed_small", model_output=o) for o in ("eps", "x_start", "v"))
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn((8, *SHAPE), generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (8,), generator=gen)
    eps = OptimalGaussian(d_eps)(x_t, t)
    x0 = d_eps.predict_x_start_from_eps(x_t, t, eps)
    v = d_eps.v_target(x0, t, eps)
    ref = d_eps.p_mean_variance(None, x_t, t, clip_denoised=False, output=eps)
    for d, out in ((d_x0, x0), (d_v, v)):
        got = d.p_mean_variance(None, x_t, t, clip_denoised=False, output=out)
        torch.testing.assert_close(got["mean"], ref["mean"])
        torch.testing.assert_close(got["pred_eps"], eps)


@pytest.mark.parametrize("gamma", [None, 5.0])
def test_min_snr_weighting_gives_every_parametrization_the_same_clamped_x0_weight(gamma):
    """A prediction x0 + e expressed as eps, x_0 or v costs min(SNR_t, gamma) |e|^2 per dimension under
    min-SNR-gamma (Hang et al. 2023), whatever the parametrisation; unweighted it costs SNR, 1 and SNR + 1."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn((6, *SHAPE), generator=gen, dtype=torch.float64)
    noise = torch.randn((6, *SHAPE), generator=gen, dtype=torch.float64)
    err = 0.1 * torch.randn((6, *SHAPE), generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 300, 600, 999])
    base = diffusion("fixed_small")
    x_t = base.q_sample(x0, t, noise)
    x0_hat = x0 + err
    eps_hat = base.predict_eps_from_x_start(x_t, t, x0_hat)
    outputs = {"eps": eps_hat, "x_start": x0_hat, "v": base.v_target(x0_hat, t, eps_hat)}
    snr = base.alphas_cumprod[t] / (1.0 - base.alphas_cumprod[t])
    e2 = err.pow(2).flatten(1).mean(1)
    unweighted = {"eps": snr, "x_start": torch.ones_like(snr), "v": snr + 1.0}
    for name, out in outputs.items():
        d = diffusion("fixed_small", model_output=name, min_snr_gamma=gamma)
        loss = d.training_losses(lambda x, s, out=out: out, x0, t, noise)["loss"]
        factor = unweighted[name] if gamma is None else snr.clamp(max=gamma)
        torch.testing.assert_close(loss, factor * e2, rtol=1e-9, atol=1e-12)


def test_min_snr_gamma_must_be_positive():
    with pytest.raises(ValueError, match="min_snr_gamma"):
        diffusion(min_snr_gamma=0.0)


def test_simple_loss_of_the_optimal_predictor_is_the_mmse():
    """E||eps - eps*||^2 / D = abar s^2 / (abar s^2 + 1 - abar) for Gaussian data."""
    d = diffusion()
    n, step = 50000, 300
    gen = torch.Generator().manual_seed(2)
    x0 = MU + S * torch.randn((n, 1, 1, 1), generator=gen, dtype=torch.float64)
    t = torch.full((n,), step, dtype=torch.int64)
    terms = d.training_losses(OptimalGaussian(d), x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    abar = d.alphas_cumprod[step].item()
    assert terms["loss"].mean().item() == pytest.approx(abar * S**2 / (abar * S**2 + 1 - abar), rel=0.03)


def test_hybrid_loss_trains_only_the_variance_through_the_bound():
    d = diffusion("learned_range", loss_type="hybrid")
    x0 = discretized_gaussian_data(4, 3).float()
    out = torch.randn((4, 2, *SHAPE[1:]), requires_grad=True)
    t = torch.tensor([0, 5, 50, 500])
    x_t = d.q_sample(x0, t, torch.randn_like(x0))
    frozen = torch.cat([out[:, :1].detach(), out[:, 1:]], dim=1)
    d.vlb_term(None, x0, x_t, t, clip_denoised=False, output=frozen).sum().backward()
    assert out.grad[:, 0].abs().max() == 0 and out.grad[:, 1].abs().max() > 0
    with pytest.raises(ValueError, match="learned_range"):
        diffusion("fixed_large", loss_type="hybrid")


# ---------------------------------------------------------------------------------------------- the bound
@pytest.fixture(scope="module")
def exact_bound():
    torch.set_num_threads(1)
    d = diffusion("learned_range")
    x0 = discretized_gaussian_data(300, 4)
    model = OptimalGaussian(d, learned=True)
    terms = d.nll_bound(model, x0, "exact", generator=torch.Generator().manual_seed(5), clip_denoised=False)
    return d, model, x0, terms


def test_prior_term_equals_its_closed_form(exact_bound):
    d, _, x0, terms = exact_bound
    abar_T = d.alphas_cumprod[-1]
    q = torch.distributions.Normal(abar_T.sqrt() * x0, (1 - abar_T).sqrt())
    p = torch.distributions.Normal(torch.zeros_like(x0), torch.ones_like(x0))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(terms["prior"], expected, rtol=1e-10, atol=1e-12)
    assert terms["prior"].dtype == torch.float64


def test_exact_bound_of_the_optimal_model_is_tight(exact_bound):
    _, _, _, terms = exact_bound
    total = terms["total"]
    mean, se = total.mean().item(), total.std().item() / math.sqrt(total.numel())
    true_nll = true_discrete_nll_nats()
    assert mean >= true_nll - 3 * se  # a bound: never below the true NLL beyond Monte Carlo error
    assert to_bpd(mean - true_nll) < TIGHT_GAP_BPD


def test_fixed_variance_bounds_are_valid_but_looser():
    d = diffusion("fixed_large")
    x0 = discretized_gaussian_data(100, 6)
    total = d.nll_bound(OptimalGaussian(d), x0, "exact", generator=torch.Generator().manual_seed(7), clip_denoised=False)["total"]
    true_nll = true_discrete_nll_nats()
    assert total.mean().item() >= true_nll - 3 * total.std().item() / 10
    assert to_bpd(total.mean().item() - true_nll) < FIXED_LARGE_GAP_BPD


@pytest.mark.parametrize("estimator", ["sampled", "stratified"])
def test_sampled_estimators_agree_with_the_exact_bound(exact_bound, estimator):
    d, model, x0, exact = exact_bound
    est = d.nll_bound(model, x0, estimator, num_sampled=16, generator=torch.Generator().manual_seed(8), clip_denoised=False)
    torch.testing.assert_close(est["prior"], exact["prior"])
    diff = est["total"] - exact["total"]
    se = diff.std().item() / math.sqrt(diff.numel())
    assert abs(diff.mean().item()) < 4 * se
    if estimator == "stratified":  # log-spaced strata: far less Monte Carlo noise than uniform draws
        assert est["total"].std().item() < 0.25 * exact["total"].std().item() + 15.0


def test_stratified_has_lower_variance_than_uniform(exact_bound):
    d, model, x0, _ = exact_bound
    kw = {"num_sampled": 8, "clip_denoised": False}
    uni = d.nll_bound(model, x0[:100], "sampled", generator=torch.Generator().manual_seed(9), **kw)["total"]
    strat = d.nll_bound(model, x0[:100], "stratified", generator=torch.Generator().manual_seed(9), **kw)["total"]
    assert strat.std() < 0.5 * uni.std()


def test_per_example_generators_make_the_bound_batch_invariant():
    d = diffusion("fixed_large")
    x0 = discretized_gaussian_data(6, 10)
    gens = lambda idx: [torch.Generator().manual_seed(100 + i) for i in idx]  # noqa: E731
    full = d.nll_bound(OptimalGaussian(d), x0, "stratified", 4, gens(range(6)))["total"]
    part = d.nll_bound(OptimalGaussian(d), x0[2:4], "stratified", 4, gens(range(2, 4)))["total"]
    torch.testing.assert_close(part, full[2:4], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize(
    ("sampler", "steps", "var_type", "tol_mean", "tol_var"),
    [
        ("ancestral", 1000, "learned_range", 0.01, 0.05),
        ("ancestral", 1000, "fixed_small", 0.01, 0.06),
        ("ancestral", 100, "learned_range", 0.01, 0.06),
        ("ddim", 200, "fixed_small", 0.01, 0.06),  # coarse DDIM steps shrink the variance (0.076 at 50 steps)
        ("ode", 200, "fixed_small", 0.01, 0.08),
        ("sde", 500, "fixed_small", 0.01, 0.08),
    ],
)
def test_samplers_reproduce_the_data_distribution(sampler, steps, var_type, tol_mean, tol_var):
    d = diffusion(var_type)
    model = OptimalGaussian(d, learned=var_type == "learned_range")
    x = samplers.sample(d, model, (1000, *SHAPE), sampler=sampler, num_steps=steps, generator=torch.Generator().manual_seed(11),
                        dtype=torch.float64, clip_denoised=False)
    assert x.mean().item() == pytest.approx(MU, abs=tol_mean)
    assert x.var().item() == pytest.approx(S**2, rel=tol_var)


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
    d = diffusion("fixed_small")
    model = OptimalGaussian(d)
    a = samplers.sample(d, model, (4, *SHAPE), "ddim", 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b = samplers.sample(d, model, (4, *SHAPE), "ddim", 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.abs().max() <= 1.0  # clip_denoised
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.sample(d, model, (4, *SHAPE), "euler", 20)


def test_score_view():
    d = diffusion()
    eps = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 10, 999])
    score = d.score_from_eps(eps, t)
    torch.testing.assert_close(score, -eps / (1 - d.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1))
