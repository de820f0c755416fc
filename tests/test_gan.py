"""GAN: the optimal-discriminator theory, losses, nets, the contract, mode coverage, CLI smoke fit and DDP."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from gan_theory import (
    LOG2,
    QuadraticLogitDiscriminator,
    fit_discriminator,
    game_value_quadrature,
    jsd_quadrature,
    normal_log_prob,
    optimal_discriminator,
)

from genbench.data.toy2d import make_toy2d
from genbench.metrics.modes import HIGH_QUALITY_FRACTION, MODES_RECOVERED, NUM_MODES, mode_coverage
from genbench.models.base import LIKELIHOOD_NONE, LikelihoodUnavailable
from genbench.models.gan import GAN, discriminator_loss, generator_loss, gradient_penalty
from genbench.nets.dcgan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    "--config", "configs/trainer/default.yaml",
    "--config", "configs/data/mnist.yaml",
    "--config", "configs/model/gan.yaml",
    "--config", "configs/profile/smoke/gan.yaml",
]

# p_r = N(0, 1), p_g = N(1, 0.5^2): D* = sigmoid(log p_r - log p_g) is a quadratic logit.
LOG_P_R = partial(normal_log_prob, mean=0.0, std=1.0)
LOG_P_G = partial(normal_log_prob, mean=1.0, std=0.5)
GRID = torch.linspace(-2.0, 2.5, 91, dtype=torch.float64)  # where both densities hold their mass




# ---------------------------------------------------------------- theory (Goodfellow et al. 2014, Prop. 1, Thm. 1)
def test_jsd_quadrature_closed_forms():
    assert abs(jsd_quadrature(LOG_P_R, LOG_P_R, -12, 12)) < 1e-9  # JSD(p || p) = 0
    far = partial(normal_log_prob, mean=40.0, std=1.0)
    assert jsd_quadrature(LOG_P_R, far, -12, 52, 100_001) == pytest.approx(LOG2, abs=1e-6)  # disjoint: log 2
    jsd = jsd_quadrature(LOG_P_R, LOG_P_G, -12, 12)
    assert 0.0 < jsd < LOG2
    # symmetric, and the quadrature has converged
    assert jsd_quadrature(LOG_P_G, LOG_P_R, -12, 12) == pytest.approx(jsd, abs=1e-10)
    assert jsd_quadrature(LOG_P_R, LOG_P_G, -12, 12, 200_001) == pytest.approx(jsd, abs=1e-8)


def test_game_value_at_exact_optimum_is_2jsd_minus_2log2():
    jsd = jsd_quadrature(LOG_P_R, LOG_P_G, -12, 12)

    def d_star_logit(x):
        return LOG_P_R(x) - LOG_P_G(x)

    assert game_value_quadrature(d_star_logit, LOG_P_R, LOG_P_G, -12, 12) == pytest.approx(2 * jsd - 2 * LOG2, abs=1e-7)
    # any other discriminator has a lower value
    assert game_value_quadrature(lambda x: 0.9 * d_star_logit(x), LOG_P_R, LOG_P_G, -12, 12) < 2 * jsd - 2 * LOG2


@pytest.mark.parametrize("kind", ["quadratic", "mlp"])
def test_trained_discriminator_reaches_optimum(kind, one_thread):
    """A discriminator trained with the GAN's own D loss approaches D* = p_r/(p_r+p_g) and V = 2 JSD - 2 log 2.

    Tolerances: the quadratic-logit family contains D* exactly (only sampling error of 2 x 20k samples
    remains): max |D - D*| on the grid < 0.03, V within 2e-3. The MLP (2 x 32 LeakyReLU, 4k samples each)
    also approximates: max error < 0.1, mean < 0.02, V within 0.01.
    """
    torch.manual_seed(0)
    n, steps, lr = (20_000, 400, 0.1) if kind == "quadratic" else (4_000, 800, 0.02)
    x_real = torch.randn(n, 1)
    x_fake = 1.0 + 0.5 * torch.randn(n, 1)
    d = QuadraticLogitDiscriminator() if kind == "quadratic" else MLPDiscriminator(1, 32, 2)
    history = fit_discriminator(d, x_real, x_fake, steps=steps, lr=lr)

    def logit(x):
        with torch.no_grad():
            return d(x.float().reshape(-1, 1)).double()

    err = (torch.sigmoid(logit(GRID)) - optimal_discriminator(LOG_P_R(GRID), LOG_P_G(GRID))).abs()
    target = 2 * jsd_quadrature(LOG_P_R, LOG_P_G, -12, 12) - 2 * LOG2
    value = game_value_quadrature(logit, LOG_P_R, LOG_P_G, -12, 12)
    if kind == "quadratic":
        assert err.max() < 0.03
        assert value == pytest.approx(target, abs=2e-3)
        assert -history[-1] == pytest.approx(target, abs=0.01)  # the sample estimate of V on the training data
    else:
        assert err.max() < 0.1 and err.mean() < 0.02
        assert value == pytest.approx(target, abs=0.01)
        assert -history[-1] == pytest.approx(target, abs=0.03)
    assert value <= target + 1e-9  # V(D) <= V(D*) for every D


# ---------------------------------------------------------------- losses
def test_losses_closed_forms():
    s_real, s_fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    # non-saturating D loss = -(E log D(real) + E log(1 - D(fake))), D = sigmoid(s)
    expected = -(torch.log(torch.sigmoid(s_real)).mean() + torch.log(1 - torch.sigmoid(s_fake)).mean())
    assert discriminator_loss("non_saturating", s_real, s_fake) == pytest.approx(float(expected), rel=1e-6)
    assert generator_loss("non_saturating", s_fake) == pytest.approx(float(-torch.log(torch.sigmoid(s_fake)).mean()))
    # hinge: max(0, 1 - s_real) + max(0, 1 + s_fake) -> (0 + 2)/2 + (1.5 + 0)/2
    assert discriminator_loss("hinge", s_real, s_fake) == pytest.approx(1.0 + 0.75)
    assert generator_loss("hinge", s_fake) == pytest.approx(1.25)
    assert discriminator_loss("wgan_gp", s_real, s_fake) == pytest.approx(-1.25 - 0.5)
    with pytest.raises(ValueError, match="loss must be one of"):
        discriminator_loss("minimax", s_real, s_fake)


def test_gradient_penalty_of_linear_critic_is_closed_form():
    w = torch.tensor([3.0, 4.0])  # ||grad|| = 5 everywhere -> penalty (5 - 1)^2 = 16
    critic = torch.nn.Linear(2, 1, bias=False)
    critic.weight.data.copy_(w[None])
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    gp = gradient_penalty(lambda x: critic(x).squeeze(1), real, fake)
    assert gp.dtype == torch.float32 and gp.item() == pytest.approx(16.0)
    gp.backward()  # differentiable with respect to the critic's weights: d/dw (||w|| - 1)^2 = 2 (1 - 1/5) w
    assert torch.allclose(critic.weight.grad[0], 2 * (1 - 1 / 5) * w)
    # under (CPU) autocast the penalty is still computed in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gradient_penalty(lambda x: critic(x).squeeze(1), real, fake).dtype == torch.float32


# ---------------------------------------------------------------- nets
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 20, 30)])
@pytest.mark.parametrize("sn", [False, True])
def test_dcgan_nets_fit_the_data_shape(shape, sn):
    g = DCGANGenerator(shape, latent_dim=8, base_channels=4)
    x = g(torch.randn(5, 8))
    assert x.shape == (5, *shape) and x.abs().max() <= 1.0  # exactly the dataset's size, tanh range
    d = DCGANDiscriminator(shape, base_channels=4, norm="none" if sn else "batch", spectral_norm=sn)
    assert d(x).shape == (5,)
    with pytest.raises(ValueError, match="x must have shape"):
        d(torch.zeros(5, *shape[:-1], shape[-1] + 1))


def test_seed_sizes_follow_the_dcgan_layouts():
    assert DCGANGenerator((1, 8, 8)).seed_hw == (4, 4)
    assert DCGANGenerator((1, 28, 28)).seed_hw == (7, 7)
    assert DCGANGenerator((3, 32, 32)).seed_hw == (4, 4)


# ---------------------------------------------------------------- the contract
def test_log_likelihood_is_unavailable():
    model = GAN(data_shape=(1, 8, 8), num_levels=17, g_channels=4, d_channels=4, latent_dim=8)
    assert model.likelihood_kind == LIKELIHOOD_NONE and model.family == "gan"
    with pytest.raises(LikelihoodUnavailable, match="no density"):
        model.log_likelihood(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    info = model.describe()
    assert info["likelihood"]["kind"] == "none"
    assert info["sampler"]["eval_mode"] and info["sampler"]["truncation"] == "none"
    assert "EMA" in info["sampler"]["weights"]
    assert info["params"] == sum(p.numel() for p in model.generator.parameters())


def test_sample_contract_images():
    model = GAN(data_shape=(1, 8, 8), num_levels=17, g_channels=4, d_channels=4, latent_dim=8)
    model.train()
    x = model.sample(6, torch.Generator().manual_seed(1))
    assert x.dtype == torch.uint8 and x.shape == (6, 1, 8, 8) and int(x.max()) <= 16
    assert model.training and model.generator_ema.training  # previous mode restored
    assert torch.equal(x, model.sample(6, torch.Generator().manual_seed(1)))  # eval mode: deterministic per seed
    assert model.sample(0).shape == (0, 1, 8, 8)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(-1)


def test_sample_contract_points():
    model = GAN(data_shape=(2,), num_levels=0, num_classes=8, latent_dim=4, mlp_hidden=16)
    x = model.sample(5)
    assert x.dtype == torch.float32 and x.shape == (5, 2)


def test_ema_update_warmup_and_buffers():
    model = GAN(data_shape=(1, 8, 8), num_levels=17, g_channels=4, d_channels=4, latent_dim=8, ema_decay=0.999)
    p_g, p_ema = model.generator.to_image.bias, model.generator_ema.to_image.bias
    with torch.no_grad():
        p_ema.fill_(0.0)
        p_g.fill_(1.0)
        model.generator.stages[1].running_mean.fill_(3.0)  # a BatchNorm statistic
    model.update_ema()  # k = 0: decay min(0.999, 1/10) = 0.1 -> ema = 0.9
    assert torch.allclose(p_ema, torch.full_like(p_ema, 0.9))
    assert torch.equal(model.generator_ema.stages[1].running_mean, model.generator.stages[1].running_mean)
    assert not any(p.requires_grad for p in model.generator_ema.parameters())


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="wgan_gp"):
        GAN(loss="wgan_gp", d_norm="batch")
    with pytest.raises(ValueError, match="n_critic"):
        GAN(n_critic=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        GAN(loss="minimax")


@pytest.mark.parametrize(
    "loss, d_norm, sn, n_critic, precision",
    [("non_saturating", "batch", False, 1, "32-true"), ("hinge", "none", True, 1, "32-true"),
     ("wgan_gp", "layer", False, 2, "bf16-mixed")],
)
def test_training_steps_for_each_loss(loss, d_norm, sn, n_critic, precision, tmp_path, one_thread):
    """Each loss trains with Lightning manual optimisation: D every batch, G every n_critic-th, both players move."""
    torch.manual_seed(0)
    x = torch.randint(0, 17, (48, 1, 8, 8), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(48, dtype=torch.long)), batch_size=8)
    model = GAN(data_shape=(1, 8, 8), num_levels=17, g_channels=4, d_channels=4, latent_dim=8, loss=loss, d_norm=d_norm,
                spectral_norm=sn, n_critic=n_critic, grad_clip_norm=1.0)
    initial = copy.deepcopy(model)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, loader)
    assert int(model.num_d_steps) == 6 and int(model.num_g_steps) == 6 // n_critic
    assert _changed(initial.generator, model.generator) and _changed(initial.discriminator, model.discriminator)
    assert _changed(initial.generator_ema, model.generator_ema)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.callback_metrics["train/d_loss"].isfinite()


# ---------------------------------------------------------------- mode coverage
@pytest.mark.parametrize("name, modes", [("eight_gaussians", 8), ("two_moons", 2), ("checkerboard", 8)])
def test_mode_coverage_closed_forms(name, modes):
    density = make_toy2d(name)
    x, _ = density.sample(4000, torch.Generator().manual_seed(0))
    full = mode_coverage(x, density)
    assert full[NUM_MODES] == modes and full[MODES_RECOVERED] == modes
    if name == "eight_gaussians":  # P(chi^2_2 <= 9) = 1 - exp(-4.5) = 0.9889
        assert full[HIGH_QUALITY_FRACTION] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    else:
        assert full[HIGH_QUALITY_FRACTION] > 0.98
    collapsed = mode_coverage(x[:1].repeat(500, 1), density)  # every sample on one mode
    assert collapsed[MODES_RECOVERED] == 1 and collapsed[HIGH_QUALITY_FRACTION] == 1.0
    far = mode_coverage(torch.full((100, 2), 50.0), density)
    assert far[MODES_RECOVERED] == 0 and far[HIGH_QUALITY_FRACTION] == 0.0


# ---------------------------------------------------------------- training through the real CLI
def _run_cli(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT / "tests"))
    proc = subprocess.run([sys.executable, "-m", "genbench", "fit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _initial_model() -> GAN:
    """The model the CLI builds before training (same configs, same seed), without fitting it."""
    from genbench.lightning_cli import make_cli

    cli = make_cli([*CONFIGS, "--trainer.logger", "false"], run=False)
    return cli.model


def _checkpoint(root: Path) -> Path:
    (ckpt,) = sorted(root.rglob("*.ckpt"))
    return ckpt


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values(), strict=True))


def test_smoke_fit_and_sample_through_cli(tmp_path):
    _run_cli([*CONFIGS, "--trainer.default_root_dir", str(tmp_path)], timeout=300)
    model = GAN.load_from_checkpoint(_checkpoint(tmp_path), weights_only=True, map_location="cpu")
    x = model.sample(8, torch.Generator().manual_seed(0))
    assert x.dtype == torch.uint8 and x.shape == (8, 1, 28, 28)
    assert int(model.num_d_steps) == 10 and int(model.num_g_steps) == 10  # a budget of 320 images = 10 batches of 32
    with pytest.raises(LikelihoodUnavailable):
        model.log_likelihood(x)
    initial = _initial_model()
    assert _changed(initial.generator, model.generator) and _changed(initial.discriminator, model.discriminator)


class RankStateDump(L.Callback):
    """Saves each rank's final weights (used by the DDP test through ``--trainer.callbacks``)."""

    def on_train_end(self, trainer, pl_module):
        torch.save(pl_module.state_dict(), Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")


def test_ddp_cpu_training_keeps_players_in_sync(tmp_path):
    """Two CPU processes (gloo): training completes, both players move, and every rank ends with the same weights."""
    _run_cli([*CONFIGS, "--trainer.default_root_dir", str(tmp_path), "--trainer.devices", "2",
              "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.max_steps", "6",
              "--trainer.limit_val_batches", "0", "--trainer.callbacks+=test_gan.RankStateDump"], timeout=300)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # parameters (and the EMA computed from them) are identical; BatchNorm statistics are per rank by design
    # (DDP broadcasts rank 0's at the start of each step)
    params = [k for k in rank0 if not any(s in k for s in ("running_", "num_batches_tracked"))]
    assert any(k.startswith("generator_ema.") for k in params)
    for key in params:
        assert torch.equal(rank0[key], rank1[key]), key
    initial = _initial_model()
    trained = copy.deepcopy(initial)
    trained.load_state_dict(rank0)
    assert _changed(initial.generator, trained.generator) and _changed(initial.discriminator, trained.discriminator)
    assert int(trained.num_d_steps) == 3 and int(trained.num_g_steps) == 3
