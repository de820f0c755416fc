"""Latent diffusion (Rombach et al. 2022): an autoencoder E/D with a spatial latent, and a DDPM on z = E(x).

Two stages inside one Lightning fit, chosen by the optimizer step (``global_step < autoencoder_steps``):

1. **Autoencoder.** A KL-regularised convolutional autoencoder (:mod:`genbench.nets.autoencoder`): q(z|x) a
   diagonal Gaussian over a ``[latent_channels, h, w]`` latent (MNIST: 28x28 -> 7x7 with two stride-2
   stages), p(x|z) the VAE's discrete per-pixel decoder over the dataset's grey levels
   (:class:`~genbench.models.pixel_decoder.DiscretePixelDecoder`), so -log p(x|z) is a proper discrete NLL.
   Loss: E_q[-log p(x|z)] + ``kl_weight`` KL(q(z|x) || N(0, I)) with ``kl_weight`` < 1 (0.1 by default):
   the latent DDPM, not N(0, I), is the prior of the final model, so the KL only keeps the latents tame
   (bounded scale, posterior variances away from zero); weight 1 would spend reconstruction quality on
   matching a prior that is thrown away.
2. **Latent diffusion.** The existing :class:`~genbench.diffusion.GaussianDiffusion` with the DDPM
   :class:`~genbench.nets.unet.UNet` trained on z ~ q(z|x) from the frozen encoder (no grad, eval mode),
   scaled to unit variance: z_scaled = z / s. The scale s (``latent_scale``, a buffer saved in checkpoints)
   is set once, at the first stage-2 step, to the standard deviation of that batch's latents (all elements
   pooled, the sums all-reduced over DDP ranks so every rank holds the same value). The UNet has an EMA
   copy updated exactly as the DDPM's, in stage 2 only. Latents are not confined to [-1, 1]: sampling and the
   bound clip the predicted z_0 / s to [-``latent_clip``, ``latent_clip``] instead (5 standard deviations).

One AdamW optimizer holds two parameter groups (``autoencoder``, ``latent_unet``), so Lightning's gradient
clipping, LR monitoring and checkpointing work unchanged. A stage computes only its own loss; the other
group gets no gradient (set to None after backward, so AdamW skips it and leaves its moments untouched) and
a learning rate of 0 (one LambdaLR lambda per group: each group's linear warm-up starts at its stage's first
step). Under DDP every parameter must take part in every backward pass, so the loss carries a zero-weighted
sum of the idle group's parameters: its gradients are exact zeros, reduced with the others and then dropped.
:attr:`LDM.training_stage` tells the budget callback which stage a batch belongs to, whose FLOPs per image
it measures separately (:class:`~genbench.bench.budget.TrainingBudget`).

Sampling: a sampler of :mod:`genbench.diffusion.samplers` in latent space (``[n, C, h, w]``), times s,
then one decoder pass; pixels are the decoder's draws or per-pixel modes (``sample_pixels``), the other
being a sample variant as for the VAE.

Likelihood: an upper bound on the discrete NLL (Vahdat et al. 2021, LSGM),

    -log P(x) <= E_{q(z|x)}[ -log p(x|z) + log q(z|x) - log p_theta(z) ],
    -log p_theta(z) <= L(z / s) + d log s,   L = L_T + sum_t L_t + L_0 (the latent DDPM's bound),

where L_0 = -log N(z_0; mu_theta(z_1, 1), sigma_1^2) is a Gaussian *density* (continuous latents: no
discretisation), and d log s is the change of variables of z_scaled = z / s (d = latent dimensions).
Estimated per image from a generator seeded by ``likelihood_seed`` and the image's bytes (as the DDPM's):
``likelihood_latent_samples`` draws of z, each with the DDPM's timestep estimator over
``likelihood_timesteps``; the per-draw bounds are averaged (not log-mean-exp'd: the inner term is itself a
Monte Carlo bound, for which an importance-weighted average is not guaranteed to stay a bound).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from typing import Any

import torch

from genbench.data.transforms import to_model_space
from genbench.diffusion import GaussianDiffusion, make_betas
from genbench.diffusion import sample as diffusion_sample
from genbench.diffusion.gaussian_diffusion import Generators, ModelFn, randn, sum_flat
from genbench.diffusion.modes import LikelihoodEstimator, LossType, PCPredictor, Sampler, parse
from genbench.diffusion.samplers import sampler_options, sampler_record
from genbench.distributions import LOG_2PI, normal_kl
from genbench.metrics.likelihood import bpd
from genbench.models.base import LIKELIHOOD_BOUND, GenerativeModel, eval_mode
from genbench.models.ddpm import image_generators
from genbench.models.pixel_decoder import (
    DECODERS,
    SAMPLE_PIXELS,
    DiscretePixelDecoder,
    other_pixel_variant,
    pixel_variant,
)
from genbench.models.schedules import ema_decay_at, ema_update, linear_warmup
from genbench.nets.autoencoder import SpatialDecoder, SpatialEncoder, latent_size
from genbench.nets.unet import UNet

STAGE_AUTOENCODER = "autoencoder"
STAGE_DIFFUSION = "latent_diffusion"
STAGES = (STAGE_AUTOENCODER, STAGE_DIFFUSION)

TRAIN_LOSS = "train/loss"  # the loss of the stage being trained
TRAIN_STAGE = "train/stage"  # 0 = autoencoder, 1 = latent diffusion
TRAIN_AE_LOSS = "train/ae_loss"  # (E_q[-log p(x|z)] + kl_weight KL) per dimension
TRAIN_RECON_NATS = "train/recon_nats"
TRAIN_KL_NATS = "train/kl_nats"
TRAIN_DIFFUSION_LOSS = "train/diffusion_loss"
TRAIN_MSE = "train/mse"
TRAIN_VLB = "train/vlb"
TRAIN_LATENT_SCALE = "train/latent_scale"
VAL_AE_LOSS = "val/ae_loss"
VAL_RECON_NATS = "val/recon_nats"
VAL_KL_NATS = "val/kl_nats"
VAL_LOSS = "val/loss"  # the latent DDPM's loss, once the latent scale is set
VAL_BPD = "val/bpd"
TEST_BPD = "test/bpd"
VAL_SEED = 12345  # the noise of the validation losses is the same at every validation


def latent_variable_bound(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    decoder_nll: Callable[[torch.Tensor], torch.Tensor],
    prior_nll: Callable[[torch.Tensor], torch.Tensor],
    num_samples: int = 1,
    generator: Generators = None,
) -> dict[str, torch.Tensor]:
    """Monte Carlo estimate of E_{q(z|x)}[ -log p(x|z) + log q(z|x) + prior_nll(z) ] per example.

    q(z|x) = N(``mean``, exp(``logvar``)) elementwise, any latent shape ``[N, ...]``; ``decoder_nll(z)`` is
    -log p(x|z) and ``prior_nll(z)`` -log p(z) or an upper bound on it, each ``[N]`` in nats. When
    ``prior_nll`` is an (unbiased estimate of an) upper bound on -log p(z), the result is an (unbiased
    estimate of an) upper bound on -log p(x) = -log int p(x|z) p(z) dz (Jensen); its gap is
    KL(q(z|x) || p(z|x)) plus the prior bound's own gap. ``num_samples`` draws of z per example are averaged;
    ``generator`` follows :func:`genbench.diffusion.gaussian_diffusion.randn` (one per example keeps each
    example's draws its own). Returns ``total``, ``reconstruction``, ``log_q`` and ``prior`` (``[N]``).
    """
    if num_samples < 1:
        raise ValueError(f"the number of latent samples must be >= 1, got {num_samples}")
    recon = log_q = prior = torch.zeros(mean.shape[0], dtype=mean.dtype, device=mean.device)
    for _ in range(num_samples):
        eps = randn(mean.shape, generator, mean.device, mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * eps
        recon = recon + decoder_nll(z)
        log_q = log_q - 0.5 * sum_flat(eps**2 + logvar + LOG_2PI)  # log N(z; mean, var), (z - mean)^2 / var = eps^2
        prior = prior + prior_nll(z)
    recon, log_q, prior = recon / num_samples, log_q / num_samples, prior / num_samples
    return {"total": recon + log_q + prior, "reconstruction": recon, "log_q": log_q, "prior": prior}


def scaled_latent_nll_bound(
    diffusion: GaussianDiffusion,
    model: ModelFn,
    z: torch.Tensor,
    scale: float,
    estimator: str = "stratified",
    num_timesteps: int = 16,
    generator: Generators = None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Upper bound on -log p(z) in nats ``[N]`` for a diffusion trained on z / ``scale`` (``clip_denoised``:
    the predicted z_0 / s clipped to the diffusion's ``clip_range``).

    The diffusion's continuous bound L (``diffusion.num_levels`` must be None: a Gaussian-density L_0) bounds
    -log p_scaled(z / s); the change of variables z = s z_scaled gives -log p(z) = -log p_scaled(z / s)
    + d log s with d = the latent dimensions per example.
    """
    if diffusion.num_levels is not None:
        raise ValueError("latents are continuous: the diffusion needs num_levels=None (a Gaussian-density L_0)")
    if not scale > 0:
        raise ValueError(f"the latent scale must be positive, got {scale}")
    terms = diffusion.nll_bound(model, z / scale, estimator=estimator, num_sampled=num_timesteps,
                                generator=generator, clip_denoised=clip_denoised)
    return terms["total"] + z[0].numel() * math.log(scale)


class LDM(GenerativeModel):
    """Latent diffusion: a KL autoencoder with a spatial latent, then a DDPM on its scaled latents.

    Args:
        data_shape, num_levels, num_classes: linked from the datamodule (images only: ``num_levels >= 2``;
            unconditional: labels are not used).
        latent_channels: C of the ``[C, h, w]`` latent; h, w = the image size after ``len(ae_channels)``
            stride-2 stages.
        ae_channels, ae_num_res_blocks: the encoder's stages (each halves the resolution) and residual blocks
            per stage; the decoder mirrors them.
        decoder, num_mixtures, min_log_scale: the discrete per-pixel decoder, as the VAE's.
        kl_weight: weight of KL(q(z|x) || N(0, I)) in the autoencoder loss (see the module docstring).
        autoencoder_steps: optimizer steps of stage 1; stage 2 trains from then on.
        ae_lr, ae_warmup_steps: AdamW learning rate of the autoencoder and its linear warm-up (stage 1; no
            weight decay).
        base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout, num_heads: the latent
            UNet (:class:`genbench.nets.unet.UNet`); ``attention_resolutions`` are latent sizes (MNIST: 7, 4, 2;
            the middle block, at the smallest size, always has attention).
        num_timesteps, beta_schedule, beta_start, beta_end, model_output, var_type, loss_type, vlb_weight,
            min_snr_gamma: the latent diffusion, as the DDPM's.
        lr, weight_decay, warmup_steps: AdamW of the UNet and its linear warm-up from the first stage-2 step.
        ema_decay, ema_warmup, use_ema: the UNet's EMA, as the DDPM's (the warm-up counts stage-2 steps).
        sampler, sampling_steps, ddim_eta, pc_predictor, pc_corrector_steps, pc_snr: the latent sampler, as the
            DDPM's.
        sample_pixels: ``draw`` (every pixel drawn from p(x|z): the model whose bound is scored) or ``mode``
            (each pixel's most probable level given z); the other is scored as a sample variant.
        latent_clip: the predicted z_0 (in units of the latent scale) is clipped to [-latent_clip, latent_clip]
            in sampling and in the bound, as pixel DDPMs clip x_0 to [-1, 1]; ``None`` = no clipping. Needed
            with the cosine schedule and eps-prediction: at t = T, abar_T is about 2.4e-9, so x_0 = (z_t -
            sqrt(1 - abar_t) eps) / sqrt(abar_t) multiplies the network's error by about 2e4 and unclipped
            samplers diverge. 5 lies beyond the latents' range (unit variance; the largest |z / s| of 256 MNIST
            validation images is 4.8). The reverse steps stay Gaussian, so the bound stays a bound.
        likelihood_estimator, likelihood_timesteps: the latent DDPM's bound estimator, as the DDPM's.
        likelihood_latent_samples: draws of z ~ q(z|x) per image in the bound.
        likelihood_seed: seed of the bound's Monte Carlo draws.
        val_bpd_images, val_bpd_timesteps: the cheap ``val/bpd`` (stratified estimator) on the first images
            of the first validation batch, in stage 2; 0 images turns it off.
    """

    family = "latent_diffusion"
    likelihood_kind = LIKELIHOOD_BOUND
    adjustable_sampling_steps = True
    evaluation_hparams = ("use_ema", "sampler", "sampling_steps", "ddim_eta", "pc_predictor", "pc_corrector_steps",
                          "pc_snr", "sample_pixels", "latent_clip", "likelihood_estimator", "likelihood_timesteps",
                          "likelihood_latent_samples", "likelihood_seed")

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        num_levels: int = 256,
        num_classes: int = 10,
        latent_channels: int = 4,
        ae_channels: tuple[int, ...] = (32, 64),
        ae_num_res_blocks: int = 1,
        decoder: str = "logistic_mixture",
        num_mixtures: int = 5,
        min_log_scale: float = -7.0,
        kl_weight: float = 0.1,
        autoencoder_steps: int = 1000,
        ae_lr: float = 1e-3,
        ae_warmup_steps: int = 100,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (),
        dropout: float = 0.0,
        num_heads: int = 1,
        num_timesteps: int = 1000,
        beta_schedule: str = "cosine",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        model_output: str = "eps",
        var_type: str = "learned_range",
        loss_type: str = "hybrid",
        vlb_weight: float = 0.001,
        min_snr_gamma: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        ema_decay: float = 0.995,
        ema_warmup: bool = True,
        use_ema: bool = True,
        sampler: str = "ancestral",
        sampling_steps: int = 50,
        ddim_eta: float = 0.0,
        pc_predictor: str = "sde",
        pc_corrector_steps: int = 1,
        pc_snr: float = 0.16,
        sample_pixels: str = "draw",
        latent_clip: float | None = 5.0,
        likelihood_estimator: str = "stratified",
        likelihood_timesteps: int = 16,
        likelihood_latent_samples: int = 1,
        likelihood_seed: int = 0,
        val_bpd_images: int = 64,
        val_bpd_timesteps: int = 8,
    ) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.save_hyperparameters()
        if self.is_continuous or len(self.data_shape) != 3:
            raise ValueError(
                f"LDM models discrete images [C, H, W] (num_levels >= 2); got data_shape={list(self.data_shape)}, "
                f"num_levels={self.num_levels}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if sample_pixels not in SAMPLE_PIXELS:
            raise ValueError(f"sample_pixels must be one of {SAMPLE_PIXELS}, got {sample_pixels!r}")
        parse(Sampler, sampler, "sampler")
        parse(PCPredictor, pc_predictor, "pc_predictor")
        parse(LikelihoodEstimator, likelihood_estimator, "likelihood_estimator")
        for name, value in (("latent_channels", latent_channels), ("autoencoder_steps", autoencoder_steps),
                            ("sampling_steps", sampling_steps), ("likelihood_timesteps", likelihood_timesteps),
                            ("likelihood_latent_samples", likelihood_latent_samples),
                            ("val_bpd_timesteps", val_bpd_timesteps)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if latent_clip is not None and not latent_clip > 0:
            raise ValueError(f"latent_clip must be positive or None, got {latent_clip}")
        if not kl_weight > 0:
            raise ValueError(f"kl_weight must be > 0 (the KL keeps q(z|x) from collapsing to a point, where the "
                             f"bound's log q(z|x) diverges), got {kl_weight}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if warmup_steps < 0 or ae_warmup_steps < 0 or pc_corrector_steps < 0 or not pc_snr > 0:
            raise ValueError("need warmup_steps >= 0, ae_warmup_steps >= 0, pc_corrector_steps >= 0 and pc_snr > 0")

        c, h, w = self.data_shape
        self.latent_shape = (int(latent_channels), *latent_size((h, w), len(ae_channels)))
        self.pixel_decoder = DiscretePixelDecoder(self.data_shape, self.num_levels, decoder, num_mixtures,
                                                  min_log_scale)
        self.encoder = SpatialEncoder(c, latent_channels, ae_channels, ae_num_res_blocks)
        self.decoder = SpatialDecoder(self.pixel_decoder.out_channels, (h, w), latent_channels, ae_channels,
                                      ae_num_res_blocks)
        self.diffusion = GaussianDiffusion(
            make_betas(beta_schedule, num_timesteps, beta_start, beta_end),
            model_output=model_output,
            var_type=var_type,
            loss_type=loss_type,
            vlb_weight=vlb_weight,
            num_levels=None,  # continuous latents: Gaussian-density L_0
            min_snr_gamma=min_snr_gamma,
            clip_range=1.0 if latent_clip is None else latent_clip,
        )
        self.net = UNet(
            in_channels=latent_channels,
            out_channels=self.diffusion.output_channels(latent_channels),
            image_size=self.latent_shape[1],
            base_channels=base_channels,
            channel_mults=tuple(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(attention_resolutions),
            dropout=dropout,
            num_heads=num_heads,
        )
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        # 0 = not estimated yet (stage 1); sampling and the bound then use 1
        self.register_buffer("latent_scale", torch.zeros(()))

    # ------------------------------------------------------------------ stages and the latent scale
    @property
    def training_stage(self) -> str:
        """``autoencoder`` while ``global_step < autoencoder_steps``, then ``latent_diffusion``."""
        return STAGE_AUTOENCODER if self.global_step < self.hparams.autoencoder_steps else STAGE_DIFFUSION

    @property
    def clips_latents(self) -> bool:
        """Whether sampling and the bound clip the predicted z_0 / s (``latent_clip``)."""
        return self.hparams.latent_clip is not None

    @property
    def latent_scale_estimated(self) -> bool:
        return bool(self.latent_scale > 0)

    @property
    def scale(self) -> float:
        """s of z_scaled = z / s: the estimated latent standard deviation, 1 before it is estimated."""
        return float(self.latent_scale) if self.latent_scale_estimated else 1.0

    @torch.no_grad()
    def estimate_latent_scale(self, z: torch.Tensor) -> float:
        """Set ``latent_scale`` to the standard deviation of all elements of ``z`` (pooled over DDP ranks)."""
        z = z.detach().to(torch.float64)
        sums = torch.stack([z.sum(), z.pow(2).sum(), torch.tensor(float(z.numel()), dtype=torch.float64,
                                                                   device=z.device)])
        if self._trainer is not None and self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        total, total_sq, count = sums.tolist()
        variance = max(total_sq / count - (total / count) ** 2, 0.0)
        if not variance > 0:
            raise ValueError("the latents have zero variance: the autoencoder collapsed; check kl_weight and ae_lr")
        self.latent_scale.fill_(math.sqrt(variance))
        return self.scale

    def autoencoder_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def _idle_parameters(self) -> list[torch.nn.Parameter]:
        """The parameter group the current stage does not train."""
        return list(self.net.parameters()) if self.training_stage == STAGE_AUTOENCODER else self.autoencoder_parameters()

    # ------------------------------------------------------------------ autoencoder
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x) ``[N, *latent_shape]`` for uint8 images ``x``."""
        return self.encoder(to_model_space(x, self.num_levels))

    def _autoencoder_terms(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One reparameterised z: ``recon_nats`` -log p(x|z), ``kl_nats`` KL(q || N(0, I)) ``[N]``, ``loss``."""
        mean, logvar = self.encode(x)
        noise = torch.randn_like(mean) if generator is None else randn(mean.shape, generator, mean.device, mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = -self.pixel_decoder.log_prob(x, self.decoder(z)).flatten(1).sum(1)
        kl = sum_flat(normal_kl(mean.float(), logvar.float(), torch.zeros(()), torch.zeros(())))
        loss = (recon + self.hparams.kl_weight * kl).mean() / self.num_dims  # nats per dimension
        return {"loss": loss, "recon_nats": recon, "kl_nats": kl}

    @torch.no_grad()
    def _frozen_latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q(z|x) from the encoder in eval mode, without gradient (float32)."""
        with eval_mode(self.encoder):
            mean, logvar = self.encode(x)
        mean, logvar = mean.float(), logvar.float()
        noise = torch.randn_like(mean) if generator is None else randn(mean.shape, generator, mean.device, mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    # ------------------------------------------------------------------ latent diffusion
    def _model_fn(self, net: UNet) -> ModelFn:
        def fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return net(z_t.to(torch.float32), t)

        return fn

    @property
    def sampling_net(self) -> UNet:
        return self.ema if self.hparams.use_ema else self.net

    def _diffusion_terms(self, z: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The latent DDPM's per-example training loss on latents ``z`` (scaled here by 1 / s)."""
        z_scaled = z / self.scale
        n, T = z.shape[0], self.diffusion.num_timesteps
        if generator is None:
            t = torch.randint(0, T, (n,), device=self.device)
            noise = torch.randn_like(z_scaled)
        else:
            t = torch.randint(0, T, (n,), generator=generator).to(self.device)
            noise = torch.randn(z_scaled.shape, generator=generator).to(self.device)
        return self.diffusion.training_losses(self._model_fn(self.net), z_scaled, t, noise)

    # ------------------------------------------------------------------ Lightning
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        n = x.shape[0]
        if self.training_stage == STAGE_AUTOENCODER:
            terms = self._autoencoder_terms(x)
            loss = terms["loss"]
            self.log_dict({TRAIN_AE_LOSS: loss.detach(), TRAIN_RECON_NATS: terms["recon_nats"].detach().mean(),
                           TRAIN_KL_NATS: terms["kl_nats"].detach().mean(), TRAIN_STAGE: 0.0}, batch_size=n)
        else:
            z = self._frozen_latents(x)
            if not self.latent_scale_estimated:
                self.log(TRAIN_LATENT_SCALE, self.estimate_latent_scale(z), batch_size=n)
            terms = self._diffusion_terms(z)
            loss = terms["loss"].mean()
            self.log_dict({TRAIN_DIFFUSION_LOSS: loss.detach(), TRAIN_STAGE: 1.0}, batch_size=n)
            for key, name in (("mse", TRAIN_MSE), ("vlb", TRAIN_VLB)):
                if key in terms and self.hparams.loss_type != LossType.SIMPLE:
                    self.log(name, terms[key].detach().mean(), batch_size=n)
        self.log(TRAIN_LOSS, loss.detach(), prog_bar=True, batch_size=n)
        # every parameter takes part in every backward (DDP requires it); the idle group's zero gradients
        # are dropped in on_after_backward
        return loss + 0.0 * sum(p.sum() for p in self._idle_parameters())

    def on_after_backward(self) -> None:
        for p in self._idle_parameters():
            p.grad = None  # AdamW skips the idle group: its moments and weights stay as they are

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * weights (the same on every rank)."""
        ema_update(self.ema.parameters(), self.net.parameters(), decay)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # As DDPM: the EMA follows each stage-2 optimizer step inside the step (Lightning counts the step
        # after this hook returns, so the step just taken is global_step + 1).
        stage = self.training_stage
        super().optimizer_step(*args, **kwargs)
        if stage == STAGE_DIFFUSION:
            stage2_steps = self.trainer.global_step + 1 - self.hparams.autoencoder_steps
            self.update_ema(ema_decay_at(self.hparams.ema_decay, stage2_steps, self.hparams.ema_warmup))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, _ = batch
        n = x.shape[0]
        generator = torch.Generator().manual_seed(VAL_SEED + batch_idx)
        ae = self._autoencoder_terms(x, generator)
        self.log(VAL_AE_LOSS, ae["loss"], sync_dist=True, batch_size=n)
        self.log(VAL_RECON_NATS, ae["recon_nats"].mean(), sync_dist=True, batch_size=n)
        self.log(VAL_KL_NATS, ae["kl_nats"].mean(), sync_dist=True, batch_size=n)
        if not self.latent_scale_estimated:
            return  # stage 2 has not taken a step: no latent DDPM to validate yet
        z = self._frozen_latents(x, generator)
        self.log(VAL_LOSS, self._diffusion_terms(z, generator)["loss"].mean(), sync_dist=True, prog_bar=True,
                 batch_size=n)
        if batch_idx == 0 and self.hparams.val_bpd_images > 0:
            images = x[: self.hparams.val_bpd_images]
            ll = self._log_likelihood(images, LikelihoodEstimator.STRATIFIED.value, self.hparams.val_bpd_timesteps, 1)
            self.log(VAL_BPD, bpd(-ll.mean(), self.num_dims).float(), sync_dist=True, prog_bar=True,
                     batch_size=images.shape[0])

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, _ = batch
        ll = self.log_likelihood(x)
        self.log(TEST_BPD, bpd(-ll.mean(), self.num_dims).float(), sync_dist=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW([
            {"params": self.autoencoder_parameters(), "lr": hp.ae_lr, "weight_decay": 0.0, "name": "autoencoder"},
            {"params": list(self.net.parameters()), "lr": hp.lr, "weight_decay": hp.weight_decay,
             "name": "latent_unet"},
        ])
        boundary = hp.autoencoder_steps

        def autoencoder_factor(step: int) -> float:
            return linear_warmup(step, hp.ae_warmup_steps) if step < boundary else 0.0

        def unet_factor(step: int) -> float:
            return 0.0 if step < boundary else linear_warmup(step - boundary, hp.warmup_steps)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [autoencoder_factor, unet_factor])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ the contract
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images (uint8, CPU): the latent sampler on the EMA UNet, z times s, one decoder pass."""
        self.check_sample_count(n)
        if labels is not None:
            raise ValueError("LDM is unconditional: sample() takes no labels (class-conditional sampling: DDPM "
                             "with class_conditional=True)")
        if n == 0:
            return torch.zeros((0, *self.data_shape), dtype=torch.uint8)
        with eval_mode(self), torch.autocast(device_type=self.device.type, enabled=False):
            z_scaled = diffusion_sample(self.diffusion, self._model_fn(self.sampling_net), (n, *self.latent_shape),
                                        generator=generator, device=self.device, clip_denoised=self.clips_latents,
                                        **sampler_options(self.hparams))
            out = self.decoder(z_scaled * self.scale)
            return self.pixel_decoder.pixels(out, self.hparams.sample_pixels == "draw", generator).cpu()

    def set_sampling_steps(self, steps: int) -> None:
        """Sample with ``steps`` steps of the configured latent sampler from now on (recorded by sampler_info)."""
        if int(steps) < 1:
            raise ValueError(f"sampling steps must be >= 1, got {steps}")
        self.hparams.sampling_steps = int(steps)

    def sample_variants(self) -> dict[str, str]:
        """The other pixel sampler: decoder modes beside draws (or draws beside modes), as the VAE's."""
        return other_pixel_variant(self.hparams.sample_pixels)

    def sample_variant(self, name: str) -> contextlib.AbstractContextManager[None]:
        return pixel_variant(self, name)

    @torch.no_grad()
    def _log_likelihood(self, x: torch.Tensor, estimator: str, num_timesteps: int, latent_samples: int) -> torch.Tensor:
        self.check_input(x)
        with eval_mode(self), torch.autocast(device_type=self.device.type, enabled=False):
            generators = image_generators(x, self.hparams.likelihood_seed)
            images = x.to(self.device)
            mean, logvar = (t.to(torch.float64) for t in self.encode(images))
            model, scale = self._model_fn(self.sampling_net), self.scale

            def decoder_nll(z: torch.Tensor) -> torch.Tensor:
                out = self.decoder(z.to(torch.float32))
                return -self.pixel_decoder.log_prob(images, out, torch.float64).flatten(1).sum(1)

            def prior_nll(z: torch.Tensor) -> torch.Tensor:
                return scaled_latent_nll_bound(self.diffusion, model, z, scale, estimator, num_timesteps, generators,
                                               clip_denoised=self.clips_latents)

            terms = latent_variable_bound(mean, logvar, decoder_nll, prior_nll, latent_samples, generators)
        return (-terms["total"]).to(torch.float64).to(x.device)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """float64 ``[N]``: minus the upper bound on -log P(x) in nats per image (a lower bound on log P(x))."""
        hp = self.hparams
        return self._log_likelihood(x, hp.likelihood_estimator, hp.likelihood_timesteps, hp.likelihood_latent_samples)

    def _unet_calls_per_latent(self) -> int:
        if self.hparams.likelihood_estimator == LikelihoodEstimator.EXACT:
            return self.diffusion.num_timesteps
        return min(self.hparams.likelihood_timesteps, self.diffusion.num_timesteps - 1) + 1

    def likelihood_info(self) -> dict[str, Any]:
        hp = self.hparams
        estimator = hp.likelihood_estimator
        k = hp.likelihood_latent_samples
        return {
            "kind": self.likelihood_kind,
            "bound": ("-log P(x) <= E_q(z|x)[-log p(x|z) + log q(z|x) + L(z/s) + d log s], an upper bound on the "
                      "discrete NLL: L = L_T + sum_t L_t + L_0 is the latent DDPM's continuous variational bound "
                      "on -log p(z/s) with a Gaussian-density L_0 (Vahdat et al. 2021), d log s the change of "
                      "variables of the latent scale"),
            "L_0": "continuous Gaussian L_0 on latents",
            "decoder": self.pixel_decoder.name,
            "estimator": estimator,
            "K": None if estimator == LikelihoodEstimator.EXACT else hp.likelihood_timesteps,
            "T": self.diffusion.num_timesteps,
            "latent_samples": k,
            "latent_shape": list(self.latent_shape),
            "latent_dims": math.prod(self.latent_shape),
            "latent_scale": self.scale,
            "latent_scale_estimated": self.latent_scale_estimated,
            "network_calls_per_image": {"encoder": 1, "decoder": k, "unet": k * self._unet_calls_per_latent()},
            "var_type": hp.var_type,
            "latent_clip": self.hparams.latent_clip,
            "ema": hp.use_ema,
            "seed": hp.likelihood_seed,
        }

    def sampler_info(self) -> dict[str, Any]:
        hp = self.hparams
        info = {"eval_mode": True, **sampler_record(hp, self.diffusion.num_timesteps), "space": "latent",
                "latent_shape": list(self.latent_shape), "latent_scale": self.scale, "ema": hp.use_ema,
                "ema_decay": hp.ema_decay, "latent_clip": hp.latent_clip,
                "pixels": "decoder_draws" if hp.sample_pixels == "draw" else "decoder_modes",
                "decoder": self.pixel_decoder.name}
        info["unet_evaluations"] = info["network_evaluations"]
        info["decoder_evaluations"] = 1
        info["network_evaluations"] += 1  # the UNet's calls and the one decoder pass
        return info
