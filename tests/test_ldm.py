"""Latent diffusion: the bound on cases with a known answer, the two training stages, their resumption."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_record import make_record
from test_resume import _checkpoints_by_batch, _datamodule, _trainer

from genbench.bench import leaderboard
from genbench.diffusion import GaussianDiffusion, make_betas
from genbench.diffusion.exact_scores import GaussianMixtureMarginals
from genbench.distributions import LOG_2PI, normal_kl
from genbench.models.ldm import (
    LDM,
    STAGE_AUTOENCODER,
    STAGE_DIFFUSION,
    latent_variable_bound,
    scaled_latent_nll_bound,
)

TINY = dict(latent_channels=2, ae_channels=(8, 16), ae_num_res_blocks=0, num_mixtures=2, base_channels=8,
            channel_mults=(1, 2), num_res_blocks=1, warmup_steps=2, ae_warmup_steps=2, sampling_steps=4,
            likelihood_timesteps=4, val_bpd_images=8, val_bpd_timesteps=2)


def tiny_ldm(dm, **kwargs) -> LDM:
    torch.manual_seed(0)
    return LDM(data_shape=dm.data_shape, num_levels=dm.num_levels, num_classes=dm.num_classes, **{**TINY, **kwargs})


# ------------------------------------------------------------------------------ the bound, known answers
def _linear_gaussian(d_x: int = 5, d_z: int = 3, sigma: float = 0.4):
    """x = W z + sigma eps, z ~ N(0, I), with orthogonal columns of W so the exact posterior is diagonal."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d_x, d_x, generator=g, dtype=torch.float64))
    w = q[:, :d_z] * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    x = torch.randn(3, d_x, generator=g, dtype=torch.float64) * 1.5
    marginal = torch.distributions.MultivariateNormal(torch.zeros(d_x, dtype=torch.float64),
                                                      w @ w.T + sigma**2 * torch.eye(d_x, dtype=torch.float64))
    post_var = 1.0 / (1.0 + (w**2).sum(0) / sigma**2)  # [d_z]
    post_mean = (x @ w) / sigma**2 * post_var  # [3, d_z]

    def decoder_nll(xs):
        return lambda z: 0.5 * (((xs - z @ w.T) / sigma) ** 2 + math.log(sigma**2) + LOG_2PI).sum(1)

    def prior_nll(z):
        return 0.5 * (z**2 + LOG_2PI).sum(1)

    return x, -marginal.log_prob(x), post_mean, torch.log(post_var).expand_as(post_mean), decoder_nll, prior_nll


def test_bound_with_the_exact_posterior_is_the_exact_nll():
    x, exact, mean, logvar, decoder_nll, prior_nll = _linear_gaussian()
    terms = latent_variable_bound(mean, logvar, decoder_nll(x), prior_nll, num_samples=3,
                                  generator=torch.Generator().manual_seed(1))
    # log p(x, z) - log q(z|x) = log p(x) for every z when q is the posterior: no Monte Carlo error at all
    torch.testing.assert_close(terms["total"], exact, rtol=0, atol=1e-10)
    torch.testing.assert_close(terms["total"], terms["reconstruction"] + terms["log_q"] + terms["prior"])


def test_bound_gap_with_a_perturbed_posterior_is_its_kl_to_the_posterior():
    x, exact, mean, logvar, decoder_nll, prior_nll = _linear_gaussian()
    q_mean, q_logvar = mean + torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64), logvar + 0.4
    gap = normal_kl(q_mean, q_logvar, mean, logvar).sum(1)  # KL(q || p(z|x)) in closed form
    m = 4000  # one draw per row, each example repeated: a per-draw sample of the estimator
    rep = lambda t: t.repeat_interleave(m, 0)  # noqa: E731
    draws = latent_variable_bound(rep(q_mean), rep(q_logvar), decoder_nll(rep(x)), prior_nll,
                                  generator=torch.Generator().manual_seed(2))["total"].view(3, m)
    estimate, stderr = draws.mean(1), draws.std(1) / math.sqrt(m)
    assert (gap > 0.1).all()
    assert ((estimate - (exact + gap)).abs() < 4 * stderr).all(), (estimate - exact, gap, stderr)


def test_continuous_diffusion_bound_of_gaussian_latents_and_the_scale_change_of_variables():
    """z ~ N(0, s^2 I), a diffusion on z / s ~ N(0, I) with the exact eps-model: the continuous bound in
    scaled space plus d log s is the bound on -log p(z); it is above the exact NLL and close to it."""
    d, n, s = 4, 2000, 2.0
    diffusion = GaussianDiffusion(make_betas("linear", 1000, 1e-4, 0.02), var_type="fixed_large", num_levels=None)
    model = GaussianMixtureMarginals(torch.zeros(1, d), 1.0).eps_model(diffusion)
    truth = GaussianMixtureMarginals(torch.zeros(1, d), s)
    z = truth.sample(n, generator=torch.Generator().manual_seed(0))
    exact = -truth.log_prob(z)
    # the change of variables, exactly: -log p(z) = -log p_scaled(z / s) + d log s
    scaled_truth = GaussianMixtureMarginals(torch.zeros(1, d), 1.0)
    torch.testing.assert_close(exact, -scaled_truth.log_prob(z / s) + d * math.log(s), rtol=0, atol=1e-12)

    bound = scaled_latent_nll_bound(diffusion, model, z, s, "exact", generator=torch.Generator().manual_seed(1))
    scaled = diffusion.nll_bound(model, z / s, "exact", generator=torch.Generator().manual_seed(1), clip_denoised=False)
    torch.testing.assert_close(bound, scaled["total"] + d * math.log(s), rtol=0, atol=1e-12)

    gap = bound - exact
    se = float(gap.std() / math.sqrt(n))
    # above the exact NLL (to Monte Carlo error) and within 0.15 nats/dim of it (measured ~0.1: L_0's variance,
    # fixed_large's beta~_2, is half the true reverse variance beta_1); dropping d log s would move it by 2.8
    assert float(gap.mean()) > -3 * se
    assert float(gap.mean()) < 0.15 * d, (float(gap.mean()), se)


def test_continuous_l0_is_the_gaussian_density_and_discrete_l0_is_unchanged():
    betas = make_betas("linear", 10, 1e-4, 0.02)
    continuous = GaussianDiffusion(betas, num_levels=None)
    discrete = GaussianDiffusion(betas, num_levels=256)
    x0 = torch.rand(3, 2, dtype=torch.float64) * 2 - 1
    x1 = x0 + 0.1
    t = torch.zeros(3, dtype=torch.int64)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    p = continuous.p_mean_variance(model, x1, t, clip_denoised=False)
    density = torch.distributions.Normal(p["mean"], torch.exp(0.5 * p["log_variance"])).log_prob(x0).sum(1)
    torch.testing.assert_close(continuous.vlb_term(model, x0, x1, t, clip_denoised=False), -density)
    assert not torch.allclose(discrete.vlb_term(model, x0, x1, t, clip_denoised=False), -density)
    assert continuous.respace([0, 5, 9]).num_levels is None
    with pytest.raises(ValueError, match="None"):
        scaled_latent_nll_bound(discrete, model, x0, 1.0)


# ------------------------------------------------------------------------------ the model
def test_bound_is_seeded_per_image_whatever_the_batching(digits):
    model = tiny_ldm(digits)
    model.latent_scale.fill_(1.7)
    x = digits.split("test")[0][:6]
    ll = model.log_likelihood(x)
    assert ll.dtype == torch.float64 and (ll < 0).all()
    again = torch.cat([model.log_likelihood(x[3:]), model.log_likelihood(x[:3])])
    torch.testing.assert_close(again, torch.cat([ll[3:], ll[:3]]), rtol=1e-6, atol=1e-4)
    info = model.likelihood_info()
    assert info["kind"] == "bound" and info["latent_scale"] == pytest.approx(1.7)
    assert "continuous Gaussian L_0 on latents" in info["L_0"] and info["latent_dims"] == 2 * 2 * 2


def test_sampler_info_variants_and_input_errors(digits):
    model = tiny_ldm(digits)
    info = model.sampler_info()
    assert info["network_evaluations"] == info["unet_evaluations"] + 1 == 5 and info["decoder_evaluations"] == 1
    assert info["latent_shape"] == [2, 2, 2] and info["latent_clip"] == 5.0 and info["pixels"] == "decoder_draws"
    model.set_sampling_steps(2)
    assert model.sampler_info()["steps"] == 2 and model.adjustable_sampling_steps
    assert model.sample_variants().keys() == {"decoder_modes"}
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    draws = model.sample(4, generator=g())
    with model.sample_variant("decoder_modes"):
        modes = model.sample(4, generator=g())
        assert model.sampler_info()["pixels"] == "decoder_modes"
    assert model.hparams.sample_pixels == "draw" and modes.shape == draws.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="kl_weight"):
        tiny_ldm(digits, kl_weight=0.0)
    with pytest.raises(ValueError, match="discrete images"):
        LDM(data_shape=(2,), num_levels=0, num_classes=0)


class _Snapshots(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.rows.append({
            "ae": [p.detach().clone() for p in pl_module.autoencoder_parameters()],
            "net": [p.detach().clone() for p in pl_module.net.parameters()],
            "ema": [p.detach().clone() for p in pl_module.ema.parameters()],
            "lr": [g["lr"] for g in opt.param_groups], "scale": float(pl_module.latent_scale),
        })


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_each_stage_trains_only_its_own_group(tmp_path, one_thread):
    dm = _datamodule()
    dm.setup()
    model = tiny_ldm(dm, autoencoder_steps=3)
    init_net = [p.detach().clone() for p in model.net.parameters()]
    snaps = _Snapshots()
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, limit_val_batches=0, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[snaps], gradient_clip_val=1.0, default_root_dir=tmp_path)
    assert model.training_stage == STAGE_AUTOENCODER
    trainer.fit(model, datamodule=dm)
    assert model.training_stage == STAGE_DIFFUSION
    r = snaps.rows
    # stage 1 (steps 1-3): the UNet and its EMA do not move, the autoencoder does; no latent scale yet
    assert all(_same(r[i]["net"], init_net) and _same(r[i]["ema"], init_net) for i in range(3))
    assert not _same(r[0]["ae"], r[1]["ae"]) and r[2]["scale"] == 0.0
    # stage 2 (steps 4-6): the autoencoder is frozen, the UNet and its EMA move; the scale is set once
    assert all(_same(r[i]["ae"], r[2]["ae"]) for i in range(3, 6))
    assert not _same(r[3]["net"], init_net) and not _same(r[5]["ema"], r[3]["ema"])
    assert r[3]["scale"] > 0 and r[3]["scale"] == r[5]["scale"]
    # each group's warm-up starts with its stage; the idle group's learning rate is 0
    lrs = [row["lr"] for row in r]  # after step k Lightning has stepped the scheduler: the lr of step k + 1
    assert [lr[0] > 0 for lr in lrs] == [True, True, False, False, False, False]
    assert [lr[1] > 0 for lr in lrs] == [False, False, True, True, True, True]
    assert lrs[2][1] < lrs[3][1] == model.hparams.lr  # the UNet's warm-up starts at the first stage-2 step
    # AdamW skipped the idle group: each group's optimizer state counts only its own stage's steps
    state = trainer.optimizers[0].state
    assert all(int(state[p]["step"]) == 3 for p in model.autoencoder_parameters())
    assert all(int(state[p]["step"]) == 3 for p in model.net.parameters())


def test_resume_across_the_stage_boundary_matches_the_uninterrupted_run(tmp_path, one_thread):
    """Stopped during the autoencoder stage, right after its last step (scale not yet set) and right after the
    first latent-diffusion step (scale set): each resumed run ends with the uninterrupted run's weights and
    latent scale."""
    def fit(root, ckpt=None, callbacks=()):
        L.seed_everything(0, verbose=False)
        dm = _datamodule()
        dm.setup()
        model = tiny_ldm(dm, autoencoder_steps=5)
        _trainer(root, callbacks).fit(model, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    every = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    reference = fit(tmp_path / "a", callbacks=[every])
    ckpts = _checkpoints_by_batch(tmp_path / "ckpt")
    scales = [float(torch.load(c, weights_only=True)["state_dict"]["latent_scale"]) for c in ckpts]
    assert scales[4] == 0.0 and scales[5] > 0 and float(reference["latent_scale"]) == scales[5]
    for batch in (4, 5, 6):
        resumed = fit(tmp_path / f"b{batch}", ckpt=ckpts[batch - 1])
        diff = [k for k in reference if not torch.equal(reference[k], resumed[k])]
        assert not diff, f"resumed after batch {batch} differs from the uninterrupted run in {diff[:5]}"


def test_leaderboard_notes_the_compute_of_each_stage():
    rec = make_record(model="ldm", family="latent_diffusion")
    rec.compute = {"training": {"images_seen": 300, "budget_train_images": 300, "train_flops_per_image": 2e9,
                                "stages": {"autoencoder": {"images": 100, "flops_per_image": 3e9, "flops": 3e11},
                                           "latent_diffusion": {"images": 200, "flops_per_image": 1.5e9,
                                                                "flops": 3e11}}},
                   "sampling": {"flops_per_image": 1e9, "network_evaluations_per_image": 51}}
    note = leaderboard._compute_note([rec])
    assert ("ldm: 300 training images of a 300 budget, 2 GFLOP/image on average (autoencoder 100 images at 3, "
            "latent_diffusion 200 images at 1.5); sampling 1 GFLOP/image (51 network evaluations)") in note


def test_latent_clip_bounds_the_predicted_latent_in_sampling_and_the_bound():
    """Cosine schedule, eps-prediction: at t = T an eps error of 1e-3 is a z_0 error of ~1e-3 / sqrt(abar_T);
    1 / sqrt(abar_T) is about 2e4; the clip keeps the prediction within [-latent_clip, latent_clip] (None: no clip)."""
    diffusion = GaussianDiffusion(make_betas("cosine", 1000), num_levels=None, clip_range=5.0)
    x_t = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((4,), 999, dtype=torch.int64)
    off = x_t + 1e-3  # the "network": eps = x_t + 0.001 (the exact eps at t = T is about x_t)
    raw = diffusion.p_mean_variance(None, x_t, t, clip_denoised=False, output=off)["pred_x_start"]
    clipped = diffusion.p_mean_variance(None, x_t, t, clip_denoised=True, output=off)["pred_x_start"]
    assert raw.abs().max() > 15 and clipped.abs().max() == pytest.approx(5.0)
    assert diffusion.respace([0, 500, 999]).clip_range == 5.0
    with pytest.raises(ValueError, match="clip_range"):
        GaussianDiffusion(make_betas("cosine", 10), clip_range=0.0)
