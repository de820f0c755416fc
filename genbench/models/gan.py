"""GAN: DCGAN-family adversarial training (Goodfellow et al. 2014; Radford et al. 2016).

The minimax game ``min_G max_D E_r[log D(x)] + E_z[log(1 - D(G(z)))]`` with three losses:

* ``non_saturating`` (default): D minimises ``softplus(-s_real) + softplus(s_fake)`` (the negated game value,
  ``s`` = logit of D); G minimises ``softplus(-s_fake)`` = ``-log D(G(z))`` instead of
  ``log(1 - D(G(z)))``, which has the same fixed point but does not saturate when D rejects G early on;
* ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D ``relu(1 - s_real) + relu(1 + s_fake)``, G ``-s_fake``;
* ``wgan_gp`` (Gulrajani et al. 2017): critic ``s_fake - s_real + lambda (||grad s(x_hat)|| - 1)^2`` on
  random interpolates, G ``-s_fake``. The penalty is computed in float32 with autocast disabled.

Training is Lightning manual optimisation: every step updates D once (on a real batch and fresh fakes)
and, every ``n_critic``-th step, G once, always in that order on every rank. Each player's backward runs
with the other player's parameters frozen (``toggle_optimizer``), through ``manual_backward`` (loss scaling
under 16-mixed) and ``clip_gradients`` (unscales first). Because each backward reaches only one player's
parameters, DDP must be told that parameters may go unused; :meth:`GAN.setup` switches
``find_unused_parameters`` on for a plain ``ddp`` strategy before the model is wrapped.

Sampling uses an exponential moving average of G's weights (its BatchNorm statistics copied from G) in
eval mode. A GAN defines no density: :meth:`GAN.log_likelihood` raises ``LikelihoodUnavailable``.

Class-conditional option (``class_conditional=True``; unconditional by default): G(z, y) with conditional
BatchNorm (a per-class gain and bias after every BatchNorm; de Vries et al. 2017; the 2-D MLP generator,
which has no BatchNorm, reads a one-hot label beside ``z``) and a projection discriminator ``s(x, y) = psi(phi(x)) + <embed(y), phi(x)>`` (Miyato & Koyama 2018), see
:mod:`genbench.nets.dcgan`. D scores real images with their own labels and fakes with the uniform random
labels G was given; G's step draws fresh labels the same way. :meth:`GAN.sample` draws uniform labels
unless given some, so its unlabelled samples are comparable with an unconditional GAN's. The WGAN-GP
penalty is taken on ``x -> s(x, y_real)`` at the interpolates: the 1-Lipschitz constraint holds for every
class, so any label is a valid place to enforce it.

Note on step counts: Lightning's ``trainer.global_step`` counts optimizer steps, so one training batch
advances it by 2 (by ``1 + 1/n_critic`` on average with ``n_critic > 1``). ``max_steps`` is in those units.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.data.transforms import to_model_space, to_pixels
from genbench.models.base import LIKELIHOOD_NONE, GenerativeModel, LikelihoodUnavailable, eval_mode
from genbench.models.schedules import ema_decay_at, ema_update
from genbench.nets.dcgan import D_NORMS, DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator

LOSSES = ("non_saturating", "hinge", "wgan_gp")

# metric names (logged through self.log)
TRAIN_LOSS = "train/loss"
TRAIN_D_LOSS = "train/d_loss"
TRAIN_G_LOSS = "train/g_loss"
TRAIN_GP = "train/gradient_penalty"
TRAIN_D_REAL = "train/d_real_score"
TRAIN_D_FAKE = "train/d_fake_score"
VAL_LOSS = "val/loss"
VAL_D_REAL = "val/d_real_score"
VAL_D_FAKE = "val/d_fake_score"


def discriminator_loss(loss: str, s_real: torch.Tensor, s_fake: torch.Tensor) -> torch.Tensor:
    """Mean discriminator / critic loss (without any gradient penalty) from its scores on real and fake."""
    if loss == "non_saturating":
        return F.softplus(-s_real).mean() + F.softplus(s_fake).mean()
    if loss == "hinge":
        return F.relu(1.0 - s_real).mean() + F.relu(1.0 + s_fake).mean()
    if loss == "wgan_gp":
        return s_fake.mean() - s_real.mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def generator_loss(loss: str, s_fake: torch.Tensor) -> torch.Tensor:
    """Mean generator loss from the discriminator's scores on fakes."""
    if loss == "non_saturating":
        return F.softplus(-s_fake).mean()
    if loss in ("hinge", "wgan_gp"):
        return -s_fake.mean()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty ``E (||grad_x D(x_hat)||_2 - 1)^2`` on random interpolates, always in float32."""
    with torch.autocast(device_type=real.device.type, enabled=False):
        real, fake = real.float(), fake.detach().float()
        eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
        x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
        s = discriminator(x_hat)
        (grad,) = torch.autograd.grad(s.float().sum(), x_hat, create_graph=True)
        return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


class GAN(GenerativeModel):
    """DCGAN-family GAN (MLP players for 2-D data).

    Args:
        data_shape, num_levels, num_classes: linked from the datamodule.
        latent_dim: size of ``z ~ N(0, I)``.
        g_channels: generator channels at full resolution (doubled per earlier stage).
        d_channels: discriminator channels at full resolution (doubled per later stage).
        d_norm: discriminator normalisation, ``batch`` (DCGAN), ``layer`` or ``none``; ``wgan_gp`` needs a
            per-example one (``layer`` or ``none``).
        spectral_norm: spectral normalisation of every discriminator weight.
        mlp_hidden: hidden width of both MLP players (2-D data only).
        mlp_layers: hidden layers of both MLP players (2-D data only).
        loss: ``non_saturating``, ``hinge`` or ``wgan_gp``.
        gp_weight: lambda of the WGAN-GP gradient penalty.
        lr_g: generator Adam learning rate.
        lr_d: discriminator Adam learning rate (two time-scales: may differ from ``lr_g``).
        beta1: Adam beta1 of both players.
        beta2: Adam beta2 of both players.
        n_critic: discriminator steps per generator step.
        ema_decay: decay of the generator's weight EMA used by :meth:`sample` (warmed up as
            ``min(decay, (1 + k) / (10 + k))`` after ``k`` generator steps); 0 samples from G itself.
        grad_clip_norm: clip each player's gradient norm to this value (``None``: no clipping). Use this,
            not ``trainer.gradient_clip_val``, which Lightning forbids with manual optimisation.
        class_conditional: learn p(x | y): conditional BatchNorm in G (one-hot label input for the 2-D MLP
            generator), a projection discriminator; needs a labelled dataset (``num_classes >= 2``).
    """

    family = "gan"
    likelihood_kind = LIKELIHOOD_NONE

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        num_levels: int = 256,
        num_classes: int = 10,
        latent_dim: int = 64,
        g_channels: int = 32,
        d_channels: int = 32,
        d_norm: str = "batch",
        spectral_norm: bool = False,
        mlp_hidden: int = 128,
        mlp_layers: int = 3,
        loss: str = "non_saturating",
        gp_weight: float = 10.0,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        n_critic: int = 1,
        ema_decay: float = 0.999,
        grad_clip_norm: float | None = None,
        class_conditional: bool = False,
    ) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.save_hyperparameters()
        self.check_conditional_init(class_conditional)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if d_norm not in D_NORMS:
            raise ValueError(f"d_norm must be one of {D_NORMS}, got {d_norm!r}")
        if loss == "wgan_gp" and d_norm == "batch" and len(self.data_shape) == 3:
            raise ValueError("loss='wgan_gp' penalises per-example gradients: use d_norm='layer' or 'none', not 'batch'")
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be positive or null, got {grad_clip_norm}")
        if latent_dim <= 0:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.automatic_optimization = False
        self.loss_name = loss
        self.latent_dim = latent_dim
        classes = self.num_classes if class_conditional else 0  # 0: the nets take no labels
        if len(self.data_shape) == 1:
            if not self.is_continuous:
                raise ValueError(f"1-D data_shape {self.data_shape} is only supported for continuous points (num_levels=0)")
            self.generator: nn.Module = MLPGenerator(self.data_shape[0], latent_dim, mlp_hidden, mlp_layers, classes)
            self.discriminator: nn.Module = MLPDiscriminator(self.data_shape[0], mlp_hidden, mlp_layers, spectral_norm,
                                                             classes)
        else:
            if self.is_continuous:
                raise ValueError("image data_shape needs discrete pixels (num_levels >= 2)")
            self.generator = DCGANGenerator(self.data_shape, latent_dim, g_channels, classes)
            self.discriminator = DCGANDiscriminator(self.data_shape, d_channels, d_norm, spectral_norm, classes)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        self.register_buffer("num_d_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("num_g_steps", torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ data maps
    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """A training batch in model space: pixels to [-1, 1]; 2-D points unchanged (float32)."""
        return x.float() if self.is_continuous else to_model_space(x, self.num_levels)

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Generator output on the data grid: uint8 pixels, or float32 points for continuous data."""
        return x.float() if self.is_continuous else to_pixels(x.float(), self.num_levels)

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.randn((n, self.latent_dim), generator)

    def real_labels(self, y: torch.Tensor) -> torch.Tensor | None:
        """The batch's labels as the players take them: int64 on the model's device, None if unconditional."""
        return y.to(self.device, torch.int64) if self.class_conditional else None

    # ------------------------------------------------------------------ Lightning
    def setup(self, stage: str) -> None:
        # Each backward reaches one player only; DDP's reducer must not wait for the other's gradients.
        from lightning.pytorch.strategies import DDPStrategy
        from lightning.pytorch.utilities import rank_zero_info

        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters", False):
            strategy._ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info("GAN: DDP find_unused_parameters=True (each player's backward reaches only its own weights)")

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=(hp.beta1, hp.beta2))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=(hp.beta1, hp.beta2))
        return [opt_g, opt_d]

    def _scores(self, real: torch.Tensor, fake: torch.Tensor, y_real: torch.Tensor | None = None,
                y_fake: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hparams.d_norm == "batch" and len(self.data_shape) == 3:
            # DCGAN: real and fake batches are normalised separately
            return self.discriminator(real, y_real), self.discriminator(fake, y_fake)
        labels = None if y_real is None else torch.cat([y_real, y_fake])
        s = self.discriminator(torch.cat([real, fake]), labels)
        return s[: real.shape[0]], s[real.shape[0] :]

    def _step_player(self, opt, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.grad_clip_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip_norm, gradient_clip_algorithm="norm")
        opt.step()

    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        real = self.to_model(x)
        y_real = self.real_labels(y)
        n = real.shape[0]
        opt_g, opt_d = self.optimizers()

        # ---- discriminator / critic
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():
                z = self.sample_z(n)
                y_fake = self.sample_labels(n, None)  # uniform classes; None (no draw) if unconditional
                fake = self.generator(z, y_fake)
            s_real, s_fake = self._scores(real, fake, y_real, y_fake)
            d_loss = discriminator_loss(self.loss_name, s_real, s_fake)
            if self.loss_name == "wgan_gp":
                gp = gradient_penalty(partial(self.discriminator, labels=y_real), real, fake)
                d_loss = d_loss + self.hparams.gp_weight * gp
                self.log(TRAIN_GP, gp.detach(), prog_bar=False)
            self._step_player(opt_d, d_loss)
        self.num_d_steps += 1

        # ---- generator (every n_critic-th discriminator step)
        if int(self.num_d_steps) % self.hparams.n_critic == 0:
            with self.toggled_optimizer(opt_g):
                z = self.sample_z(n)
                y_gen = self.sample_labels(n, None)
                s_gen = self.discriminator(self.generator(z, y_gen), y_gen)
                g_loss = generator_loss(self.loss_name, s_gen)
                self._step_player(opt_g, g_loss)
            self.num_g_steps += 1
            self.update_ema()
            self.log(TRAIN_G_LOSS, g_loss.detach(), prog_bar=True)

        self.log(TRAIN_D_LOSS, d_loss.detach(), prog_bar=True)
        self.log(TRAIN_LOSS, d_loss.detach())
        self.log(TRAIN_D_REAL, s_real.detach().float().mean())
        self.log(TRAIN_D_FAKE, s_fake.detach().float().mean())

    @torch.no_grad()
    def update_ema(self) -> None:
        """``ema <- d ema + (1 - d) G`` on weights (warmed-up ``d``); BatchNorm statistics copied from G."""
        k = int(self.num_g_steps)
        ema_update(self.generator_ema.parameters(), self.generator.parameters(),
                   ema_decay_at(self.hparams.ema_decay, k))
        for b_ema, b in zip(self.generator_ema.buffers(), self.generator.buffers(), strict=True):
            b_ema.copy_(b)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        real = self.to_model(x)
        n = real.shape[0]
        z = self.sample_z(n)
        y_fake = self.sample_labels(n, None)
        s_real, s_fake = self._scores(real, self.generator(z, y_fake), self.real_labels(y), y_fake)
        self.log(VAL_LOSS, discriminator_loss(self.loss_name, s_real, s_fake), sync_dist=True, batch_size=n)
        self.log(VAL_D_REAL, s_real.float().mean(), sync_dist=True, batch_size=n)
        self.log(VAL_D_FAKE, s_fake.float().mean(), sync_dist=True, batch_size=n)

    # ------------------------------------------------------------------ the contract
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples from the EMA generator in eval mode: uint8 ``[n, C, H, W]`` (float32 points in 2-D).

        A class-conditional GAN draws class ``labels[i]`` for sample ``i`` (uniform classes, drawn on
        ``generator`` after ``z``, when ``labels`` is None); ``z`` does not depend on the labels, so one seed
        with different labels gives the same noise in different classes.
        """
        self.check_sample_count(n)
        net = self.generator_ema if self.hparams.ema_decay > 0 else self.generator
        labels = self.check_labels(labels, n)
        if n == 0:
            return self.from_model(torch.zeros(0, *self.data_shape)).cpu()
        z = self.sample_z(n, generator)
        if labels is None:
            labels = self.sample_labels(n, None, generator)
        with eval_mode(net):
            with torch.autocast(device_type=self.device.type, enabled=False):
                x = net(z, labels)
            return self.from_model(x).cpu()

    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise LikelihoodUnavailable(
            "a GAN defines no density over the data (only an implicit sampler), so it has no log-likelihood "
            "or bits/dim; compare it by sample metrics (FID/KID, precision/recall)"
        )

    def likelihood_info(self) -> dict[str, Any]:
        return {"kind": self.likelihood_kind, "reason": "implicit model: no density"}

    def sampler_info(self) -> dict[str, Any]:
        ema = self.hparams.ema_decay > 0
        return {
            "sampler": "generator forward pass, z ~ N(0, I)",
            "weights": f"EMA of generator weights (decay {self.hparams.ema_decay})" if ema else "generator",
            "eval_mode": True,
            "batchnorm": "running statistics (eval mode)" if len(self.data_shape) == 3 else "none",
            "truncation": "none",
            "conditioning": self._conditioning(),
            "latent_dim": self.latent_dim,
            "loss": self.loss_name,
            "discriminator_params": sum(p.numel() for p in self.discriminator.parameters()),
            "generator_steps": int(self.num_g_steps),
            "network_evaluations": 1,
        }

    def _conditioning(self) -> str:
        if not self.class_conditional:
            return "none"
        g = "conditional BatchNorm G" if len(self.data_shape) == 3 else "one-hot label input to G"
        return f"{g}, projection D; labels uniform unless given"

    def num_parameters(self) -> int:
        """Parameters of the generator, the network that is sampled (the discriminator is in ``sampler_info``)."""
        return sum(p.numel() for p in self.generator.parameters())
