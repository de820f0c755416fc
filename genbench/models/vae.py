"""Convolutional VAE with a discrete decoder: the ELBO and the importance-weighted bound in bits/dim.

q(z|x) is a diagonal Gaussian from a conv encoder, p(z) a standard normal, and p(x|z) a distribution over
the dataset's *discrete* grey levels (:class:`genbench.models.pixel_decoder.DiscretePixelDecoder`, shared
with latent diffusion), independent across pixels given z: either a mixture of discretized
logistics with open edge bins (Salimans et al. 2017; one component is the plain discretized logistic) or a
per-pixel categorical over all ``num_levels``. Because p(x|z) is a probability mass function, the bounds
below are bounds on the discrete log-likelihood and convert to a valid bits/dim (a Gaussian/MSE decoder
would give none: a density over continuous values is not a probability of the discrete data).

* ELBO:  log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))      (analytic KL, one reparameterised sample)
* IWAE:  log p(x) >= E[ log (1/k) sum_i p(x, z_i) / q(z_i|x) ]  (Burda et al. 2016; k = 1 is the ELBO)

``log_likelihood`` is the IWAE bound with ``iw_samples`` = k, the ELBO is offered beside it through
``likelihood_variants``. Training optimises the ELBO with optional KL warm-up (beta from 0 to 1) and free
bits (Kingma et al. 2016). Diagnostics for the bench runner: :meth:`VAE.reconstructions`,
:meth:`VAE.interpolate` and :meth:`VAE.active_units` (Burda et al.: a latent is active when
Cov_x(E_q[z_j]) > 0.01).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from genbench.data.transforms import to_model_space
from genbench.distributions import diag_normal_log_prob, normal_kl, standard_normal_log_prob
from genbench.metrics.likelihood import bpd
from genbench.models.base import LIKELIHOOD_BOUND, GenerativeModel, eval_mode
from genbench.models.pixel_decoder import (
    DECODERS,
    SAMPLE_PIXELS,
    DiscretePixelDecoder,
    other_pixel_variant,
    pixel_variant,
)
from genbench.nets.vae import ConvDecoder, ConvEncoder

# Metric names (shared with the harness and the leaderboard).
TRAIN_LOSS = "train/loss"
TRAIN_KL_NATS = "train/kl_nats"
TRAIN_RECON_NATS = "train/recon_nats"
TRAIN_ELBO_BPD = "train/elbo_bpd"
TRAIN_KL_WEIGHT = "train/kl_weight"
VAL_LOSS = "val/loss"
VAL_KL_NATS = "val/kl_nats"
VAL_RECON_NATS = "val/recon_nats"
VAL_ELBO_BPD = "val/elbo_bpd"
VAL_BPD = "val/bpd"
VAL_ACTIVE_UNITS = "val/active_units"


class VAE(GenerativeModel):
    """Gaussian-latent VAE with a discrete per-pixel decoder.

    Args:
        data_shape, num_levels, num_classes: linked from the datamodule (images only: ``num_levels >= 2``).
        latent_dim: size of z.
        channels: channels of the encoder stages (each halves the resolution); the decoder mirrors them.
        num_res_blocks: residual blocks per stage.
        decoder: ``logistic_mixture`` (``num_mixtures`` discretized logistics per pixel) or ``categorical``
            (a softmax over all ``num_levels`` per pixel).
        num_mixtures: components of the logistic mixture (1 = a single discretized logistic).
        min_log_scale: floor on the logistic log-scales (model space, where a bin is 2/(L-1) wide).
        lr: Adam learning rate.
        lr_decay_steps: if > 0, cosine decay of the learning rate to ``lr_min_ratio * lr`` over this many
            steps.
        lr_min_ratio: final learning rate of the cosine decay, relative to ``lr``.
        kl_warmup_steps: the KL weight rises linearly from 0 to 1 over this many steps (0 = off). The
            reported bounds always use weight 1.
        free_bits_nats: if > 0, each latent's batch-averaged KL is clamped from below at this value in the
            training loss (Kingma et al. 2016); 0 = off.
        iw_samples: k of the importance-weighted bound returned by ``log_likelihood`` (1 = the ELBO).
        iw_batch_size: (example, sample) pairs per decoder call when evaluating the bounds (memory knob).
        val_iw_samples: k of the cheap importance-weighted ``val/bpd`` logged during validation.
        sample_pixels: ``draw`` samples every pixel from p(x|z) (the model's own distribution, the honest
            input to FID); ``mode`` takes each pixel's most probable level given z.
        active_unit_threshold: a latent is active when the variance over x of E_q[z_j] exceeds this.
    """

    family = "vae"
    likelihood_kind = LIKELIHOOD_BOUND
    evaluation_hparams = ("iw_samples", "iw_batch_size", "sample_pixels")

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        num_levels: int = 256,
        num_classes: int = 10,
        latent_dim: int = 32,
        channels: tuple[int, ...] = (32, 64),
        num_res_blocks: int = 1,
        decoder: str = "logistic_mixture",
        num_mixtures: int = 5,
        min_log_scale: float = -7.0,
        lr: float = 1e-3,
        lr_decay_steps: int = 0,
        lr_min_ratio: float = 0.1,
        kl_warmup_steps: int = 0,
        free_bits_nats: float = 0.0,
        iw_samples: int = 64,
        iw_batch_size: int = 512,
        val_iw_samples: int = 8,
        sample_pixels: str = "draw",
        active_unit_threshold: float = 0.01,
    ) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        if len(self.data_shape) != 3:
            raise ValueError(f"VAE needs image data [C, H, W], got data_shape={list(self.data_shape)}")
        if self.num_levels < 2:
            raise ValueError(f"VAE needs a discrete dataset (num_levels >= 2), got num_levels={num_levels}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if sample_pixels not in SAMPLE_PIXELS:
            raise ValueError(f"sample_pixels must be one of {SAMPLE_PIXELS}, got {sample_pixels!r}")
        for name, value in (
            ("latent_dim", latent_dim),
            ("num_mixtures", num_mixtures),
            ("iw_samples", iw_samples),
            ("iw_batch_size", iw_batch_size),
            ("val_iw_samples", val_iw_samples),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if kl_warmup_steps < 0 or free_bits_nats < 0 or lr <= 0:
            raise ValueError(
                "need kl_warmup_steps >= 0, free_bits_nats >= 0 and lr > 0, "
                f"got {kl_warmup_steps}, {free_bits_nats}, {lr}"
            )
        self.save_hyperparameters()
        c, h, w = self.data_shape
        self.pixel_decoder = DiscretePixelDecoder(self.data_shape, self.num_levels, decoder, num_mixtures, min_log_scale)
        self.encoder = ConvEncoder(c, (h, w), latent_dim, channels, num_res_blocks)
        self.decoder = ConvDecoder(self.pixel_decoder.out_channels, (h, w), latent_dim, channels, num_res_blocks)
        self.latent_dim = latent_dim
        self._au_stats: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ q(z|x) and p(x|z)
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x) for uint8 images ``x``."""
        return self.encoder(to_model_space(x, self.num_levels))

    def _split_decoder_output(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Decoder feature maps -> per-pixel distribution parameters, components / levels along dim 1."""
        return self.pixel_decoder.split(out)

    def decoder_log_prob(
        self, x: torch.Tensor, out: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Per-pixel log p(x|z) ``[N, C, H, W]`` of uint8 ``x`` given decoder output ``out``, in ``dtype``."""
        return self.pixel_decoder.log_prob(x, out, dtype)

    def decoder_level_log_probs(self, out: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """log p(x_pixel = k | z) for every level k: ``[N, L, C, H, W]`` (each pixel's entries sum to one)."""
        return self.pixel_decoder.level_log_probs(out, dtype)

    def decoder_pixels(
        self, out: torch.Tensor, draw: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """uint8 pixels from p(x|z): a draw, or each pixel's most probable level (``draw=False``)."""
        return self.pixel_decoder.pixels(out, draw, generator)

    # ------------------------------------------------------------------ bounds
    def elbo_terms(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """One reparameterised sample: ``recon_nats`` = -log p(x|z) ``[N]``, ``kl_per_latent`` ``[N, D]``."""
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        log_px = self.decoder_log_prob(x, self.decoder(z), dtype).flatten(1).sum(1)
        kl = normal_kl(
            mean.to(dtype), logvar.to(dtype), torch.zeros((), dtype=dtype), torch.zeros((), dtype=dtype)
        )
        return {"recon_nats": -log_px, "kl_per_latent": kl, "mean": mean}

    def _iw_log_weights(self, x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """log p(x, z_i) - log q(z_i|x) for i = 1..k, float64 ``[k, N]``, decoded in chunks."""
        mean, logvar = (t.double() for t in self.encode(x))
        n = x.shape[0]
        per_call = max(1, self.hparams.iw_batch_size // max(n, 1))
        log_w = []
        for start in range(0, k, per_call):
            kc = min(per_call, k - start)
            eps = self.randn((kc, n, self.latent_dim), generator).double()
            z = mean + torch.exp(0.5 * logvar) * eps  # [kc, N, D]
            out = self.decoder(z.flatten(0, 1).float())
            x_rep = x.unsqueeze(0).expand(kc, *x.shape).flatten(0, 1)
            log_px = self.decoder_log_prob(x_rep, out, torch.float64).flatten(1).sum(1).view(kc, n)
            log_w.append(log_px + standard_normal_log_prob(z) - diag_normal_log_prob(z, mean, logvar))
        return torch.cat(log_w, dim=0)

    def log_likelihood(
        self, x: torch.Tensor, iw_samples: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Importance-weighted lower bound on log P(x) with k = ``iw_samples``: float64 nats ``[N]``."""
        self.check_input(x)
        k = self.hparams.iw_samples if iw_samples is None else int(iw_samples)
        if k < 1:
            raise ValueError(f"iw_samples must be >= 1, got {k}")
        with self._eval_context():
            log_w = self._iw_log_weights(x.to(self.device), k, generator)
        return (torch.logsumexp(log_w, dim=0) - math.log(k)).cpu()

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The ELBO (analytic KL, one reparameterised sample) in nats per example, float64 ``[N]``."""
        self.check_input(x)
        with self._eval_context():
            terms = self.elbo_terms(x.to(self.device), torch.float64)
        return (-terms["recon_nats"] - terms["kl_per_latent"].sum(1)).cpu()

    def likelihood_info(self) -> dict[str, Any]:
        return {
            "kind": self.likelihood_kind,
            "estimator": "iwae",
            "k": self.hparams.iw_samples,
            "decoder": self._decoder_name(),
            "variants": {"elbo": "analytic KL + one reparameterised sample of log p(x|z)"},
        }

    def likelihood_variants(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {"elbo": self.elbo}

    # ------------------------------------------------------------------ sampling and diagnostics
    def sampler_info(self) -> dict[str, Any]:
        return {
            "eval_mode": True,
            "sampler": ("ancestral: z ~ N(0, I), x ~ p(x|z)" if self.hparams.sample_pixels == "draw"
                        else "z ~ N(0, I), x = the per-pixel mode of p(x|z)"),
            "pixels": "decoder_draws" if self.hparams.sample_pixels == "draw" else "decoder_modes",
            "decoder": self._decoder_name(),
            "network_evaluations": 1,  # one decoder pass
        }

    def sample_variants(self) -> dict[str, str]:
        """The other pixel sampler: decoder modes beside draws (or draws beside modes)."""
        return other_pixel_variant(self.hparams.sample_pixels)

    def sample_variant(self, name: str) -> contextlib.AbstractContextManager[None]:
        return pixel_variant(self, name)

    def _decoder_name(self) -> str:
        return self.pixel_decoder.name

    @contextlib.contextmanager
    def _eval_context(self) -> Iterator[None]:
        """Eval mode, no grad, no autocast; the previous training mode is restored afterwards."""
        with eval_mode(self):
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                yield

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        self.check_sample_count(n)
        with self._eval_context():
            z = self.randn((n, self.latent_dim), generator)
            x = self.decoder_pixels(self.decoder(z), self.hparams.sample_pixels == "draw", generator)
        return x.cpu()

    def reconstructions(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 reconstructions: each pixel's most probable level under p(x | z = E_q[z|x])."""
        self.check_input(x)
        with self._eval_context():
            mean, _ = self.encode(x.to(self.device))
            return self.decoder_pixels(self.decoder(mean), draw=False).cpu()

    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """uint8 ``[N, steps, C, H, W]``: decoder modes along the line between the posterior means."""
        self.check_input(x_a, "x_a")
        self.check_input(x_b, "x_b")
        if x_a.shape[0] != x_b.shape[0] or steps < 2:
            raise ValueError(
                "need equally many images in x_a and x_b and steps >= 2, "
                f"got {x_a.shape[0]}, {x_b.shape[0]}, {steps}"
            )
        with self._eval_context():
            z_a, _ = self.encode(x_a.to(self.device))
            z_b, _ = self.encode(x_b.to(self.device))
            t = torch.linspace(0.0, 1.0, steps, device=self.device).view(1, steps, 1)
            z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)
            x = self.decoder_pixels(self.decoder(z.flatten(0, 1)), draw=False)
        return x.view(x_a.shape[0], steps, *self.data_shape).cpu()

    def active_units(self, x: torch.Tensor, batch_size: int = 500) -> int:
        """Latents with Cov_x(E_q[z_j | x]) > ``active_unit_threshold`` over ``x`` (Burda et al. 2016)."""
        self.check_input(x)
        with self._eval_context():
            means = torch.cat(
                [
                    self.encode(x[i : i + batch_size].to(self.device))[0].double()
                    for i in range(0, len(x), batch_size)
                ]
            )
        return int((means.var(dim=0, unbiased=True) > self.hparams.active_unit_threshold).sum())

    # ------------------------------------------------------------------ Lightning
    def kl_weight(self) -> float:
        if self.hparams.kl_warmup_steps <= 0:
            return 1.0
        return min(1.0, (self.global_step + 1) / self.hparams.kl_warmup_steps)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        terms = self.elbo_terms(x)
        recon, kl_per_latent = terms["recon_nats"], terms["kl_per_latent"]
        if self.hparams.free_bits_nats > 0:
            kl_term = kl_per_latent.mean(0).clamp(min=self.hparams.free_bits_nats).sum()
        else:
            kl_term = kl_per_latent.sum(1).mean()
        beta = self.kl_weight()
        loss = (recon.mean() + beta * kl_term) / self.num_dims  # nats per dimension
        kl = kl_per_latent.sum(1).detach()
        log = {
            TRAIN_LOSS: loss.detach(),
            TRAIN_RECON_NATS: recon.detach().mean(),
            TRAIN_KL_NATS: kl.mean(),
            TRAIN_ELBO_BPD: bpd((recon.detach() + kl).mean(), self.num_dims),
            TRAIN_KL_WEIGHT: beta,
        }
        self.log_dict(log, prog_bar=False, batch_size=x.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        zeros = torch.zeros(self.latent_dim, dtype=torch.float64, device=self.device)
        self._au_stats = [
            zeros.clone(),
            zeros.clone(),
            torch.zeros((), dtype=torch.float64, device=self.device),
        ]

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        n = x.shape[0]
        with torch.autocast(device_type=self.device.type, enabled=False):
            terms = self.elbo_terms(x, torch.float64)
            recon, kl = terms["recon_nats"], terms["kl_per_latent"].sum(1)
            nll_elbo = recon + kl
            k = self.hparams.val_iw_samples
            if k > 1:
                nll_iw = -(torch.logsumexp(self._iw_log_weights(x, k, None), dim=0) - math.log(k))
            else:
                nll_iw = nll_elbo
        if self._au_stats is not None:
            mean = terms["mean"].double()
            self._au_stats[0] += mean.sum(0)
            self._au_stats[1] += mean.pow(2).sum(0)
            self._au_stats[2] += n
        self.log(VAL_LOSS, nll_elbo.mean().float() / self.num_dims, sync_dist=True, batch_size=n)
        self.log(VAL_RECON_NATS, recon.mean().float(), sync_dist=True, batch_size=n)
        self.log(VAL_KL_NATS, kl.mean().float(), sync_dist=True, batch_size=n)
        self.log(VAL_ELBO_BPD, bpd(nll_elbo.mean().float(), self.num_dims), sync_dist=True, batch_size=n)
        self.log(
            VAL_BPD, bpd(nll_iw.mean().float(), self.num_dims), sync_dist=True, batch_size=n, prog_bar=True
        )

    def on_validation_epoch_end(self) -> None:
        if self._au_stats is None:
            return
        total, total_sq, count = (self.trainer.strategy.reduce(t, reduce_op="sum") for t in self._au_stats)
        self._au_stats = None
        if float(count) < 2:
            return
        var = (total_sq - total.pow(2) / count) / (count - 1)
        active = (var > self.hparams.active_unit_threshold).sum().float()
        self.log(VAL_ACTIVE_UNITS, active, sync_dist=False)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        steps = self.hparams.lr_decay_steps
        if steps <= 0:
            return opt
        floor = self.hparams.lr_min_ratio

        def factor(step: int) -> float:
            progress = min(step, steps) / steps
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
