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

Class-conditional option (``class_conditional=True``): the label y enters the encoder q(z | x, y) as one-hot
constant channels beside the image, and the decoder p(x | z, y) as a one-hot vector beside z (the first
conv / linear layer then holds a learned per-class bias, i.e. a learned class embedding, at no cost to the
unconditional layout). The prior becomes a learned per-class diagonal Gaussian p(z | y) = N(mu_y, sigma_y^2),
initialised to N(0, I), so that classes may occupy their own regions of latent space; every KL is the
closed form between q(z | x, y) and p(z | y). With labels, ``log_likelihood`` is the IWAE-k bound of
log p(x | y). Without labels it bounds the marginal log p(x) = log (1/K) sum_y p(x | y) (uniform p(y)) by
stratified importance sampling over the K classes: k_y = ceil(k / K) samples per class (at least one), and

    log p(x) >= E[ log (1/K) sum_y (1/k_y) sum_i p(x, z_{y,i} | y) / q(z_{y,i} | x, y) ]

(Jensen: each inner average is an unbiased estimate of p(x | y)). It costs K * k_y decoder passes, the same
as the unconditional IWAE-k when K divides k (k = 64 with 10 classes runs 7 per class, 70 passes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.data.transforms import to_model_space
from genbench.distributions import diag_normal_log_prob, normal_kl, standard_normal_log_prob
from genbench.metrics.likelihood import bpd
from genbench.models.base import LIKELIHOOD_BOUND, GenerativeModel, eval_mode, log_mean_exp_over_classes
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
        class_conditional: model p(x | y) with q(z | x, y), p(z | y) and p(x | z, y) (see the module
            docstring); training reads the labels of each batch. Without labels, ``log_likelihood`` and the
            ``elbo`` variant bound the marginal log p(x) under uniform classes.
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
        class_conditional: bool = False,
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
        self.check_conditional_init(class_conditional)
        c, h, w = self.data_shape
        label_width = self.num_classes if class_conditional else 0  # one-hot label beside x and beside z
        self.pixel_decoder = DiscretePixelDecoder(self.data_shape, self.num_levels, decoder, num_mixtures, min_log_scale)
        self.encoder = ConvEncoder(c + label_width, (h, w), latent_dim, channels, num_res_blocks)
        self.decoder = ConvDecoder(self.pixel_decoder.out_channels, (h, w), latent_dim + label_width, channels,
                                   num_res_blocks)
        if class_conditional:  # created last, so the unconditional layout (and its checkpoints) is unchanged
            self.prior_mean = nn.Embedding(self.num_classes, latent_dim)
            self.prior_log_std = nn.Embedding(self.num_classes, latent_dim)
            nn.init.zeros_(self.prior_mean.weight)  # p(z | y) starts as the unconditional N(0, I)
            nn.init.zeros_(self.prior_log_std.weight)
        self.latent_dim = latent_dim
        self._au_stats: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ q(z|x,y), p(z|y) and p(x|z,y)
    def _require_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Labels as int64 on the model's device for a conditional model (whose networks cannot run without
        them), None for an unconditional one."""
        if not self.class_conditional:
            return None
        if labels is None:
            raise ValueError(f"the class-conditional {type(self).__name__} needs int64 labels [N] here")
        return labels.to(device=self.device, dtype=torch.int64)

    def _one_hot(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return F.one_hot(labels, self.num_classes).to(dtype)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x) (q(z|x,y) for a conditional model) for uint8 images ``x``."""
        h = to_model_space(x, self.num_levels)
        labels = self._require_labels(labels)
        if labels is not None:
            code = self._one_hot(labels, h.dtype)[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, code], dim=1)
        return self.encoder(h)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder feature maps of p(x|z) (p(x|z,y) for a conditional model) for latents ``[N, latent_dim]``."""
        labels = self._require_labels(labels)
        if labels is not None:
            z = torch.cat([z, self._one_hot(labels, z.dtype)], dim=1)
        return self.decoder(z)

    def prior_params(self, labels: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z) (zeros, broadcastable) or of p(z|y) (``[N, latent_dim]``)."""
        labels = self._require_labels(labels)
        if labels is None:
            zero = torch.zeros((), dtype=dtype, device=self.device)
            return zero, zero
        return self.prior_mean(labels).to(dtype), 2.0 * self.prior_log_std(labels).to(dtype)

    def prior_log_prob(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """log p(z) (log p(z|y)) summed over the latents; ``z`` is ``[..., N, latent_dim]``."""
        if not self.class_conditional:
            return standard_normal_log_prob(z)
        mean, logvar = self.prior_params(labels, z.dtype)
        return diag_normal_log_prob(z, mean, logvar)

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
    def elbo_terms(
        self, x: torch.Tensor, dtype: torch.dtype = torch.float32, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """One reparameterised sample: ``recon_nats`` = -log p(x|z) ``[N]``, ``kl_per_latent`` ``[N, D]``
        (KL(q(z|x) || p(z)), or KL(q(z|x,y) || p(z|y)) given the ``labels`` a conditional model needs)."""
        labels = self._require_labels(labels)
        mean, logvar = self.encode(x, labels)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        log_px = self.decoder_log_prob(x, self.decode(z, labels), dtype).flatten(1).sum(1)
        prior_mean, prior_logvar = self.prior_params(labels, dtype)
        kl = normal_kl(mean.to(dtype), logvar.to(dtype), prior_mean, prior_logvar)
        return {"recon_nats": -log_px, "kl_per_latent": kl, "mean": mean}

    def _iw_log_weights(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x, z_i) - log q(z_i|x) for i = 1..k (given y for a conditional model), float64 ``[k, N]``,
        decoded in chunks of at most ``iw_batch_size`` images."""
        labels = self._require_labels(labels)
        mean, logvar = (t.double() for t in self.encode(x, labels))
        n = x.shape[0]
        per_call = max(1, self.hparams.iw_batch_size // max(n, 1))
        log_w = []
        for start in range(0, k, per_call):
            kc = min(per_call, k - start)
            eps = self.randn((kc, n, self.latent_dim), generator).double()
            z = mean + torch.exp(0.5 * logvar) * eps  # [kc, N, D]
            out = self.decode(z.flatten(0, 1).float(), None if labels is None else labels.repeat(kc))
            x_rep = x.unsqueeze(0).expand(kc, *x.shape).flatten(0, 1)
            log_px = self.decoder_log_prob(x_rep, out, torch.float64).flatten(1).sum(1).view(kc, n)
            log_w.append(log_px + self.prior_log_prob(z, labels) - diag_normal_log_prob(z, mean, logvar))
        return torch.cat(log_w, dim=0)

    def samples_per_class(self, k: int) -> int:
        """k_y of the stratified marginal bound: ceil(k / K) importance samples per class, at least one, so
        that the marginal never uses fewer samples than the bound given labels."""
        return max(1, -(-k // self.num_classes))

    def _iw_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None,
                  labels: torch.Tensor | None) -> torch.Tensor:
        """IWAE-k of log p(x) (of log p(x|y) given labels); the stratified marginal for a conditional model
        without labels (module docstring). float64 ``[N]`` on the model's device."""
        if self.class_conditional and labels is None:
            k_y = self.samples_per_class(k)
            return log_mean_exp_over_classes(lambda y: self._iw_bound(x, k_y, generator, y), x.shape[0],
                                             self.num_classes, self.device)
        log_w = self._iw_log_weights(x, k, generator, labels)
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    def log_likelihood(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        iw_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Importance-weighted lower bound on log P(x) with k = ``iw_samples``: float64 nats ``[N]``.

        A conditional model bounds log p(x | y) with ``labels`` (IWAE-k), and without them the marginal
        log p(x) by stratified importance sampling over classes with ceil(k / K) samples per class."""
        self.check_input(x)
        labels = self.check_labels(labels, x.shape[0])
        k = self.hparams.iw_samples if iw_samples is None else int(iw_samples)
        if k < 1:
            raise ValueError(f"iw_samples must be >= 1, got {k}")
        with self._eval_context():
            return self._iw_bound(x.to(self.device), k, generator, labels).cpu()

    def _elbo(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        terms = self.elbo_terms(x, torch.float64, labels)
        return -terms["recon_nats"] - terms["kl_per_latent"].sum(1)

    def elbo(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The ELBO (analytic KL, one reparameterised sample) in nats per example, float64 ``[N]``.

        A conditional model gives the ELBO of log p(x | y) with ``labels``; without them
        log (1/K) sum_y exp ELBO(x, y), a lower bound on log p(x) because each ELBO(x, y) <= log p(x | y)
        and log-sum-exp is increasing (one sample per class: K decoder passes)."""
        self.check_input(x)
        labels = self.check_labels(labels, x.shape[0])
        with self._eval_context():
            x = x.to(self.device)
            if self.class_conditional and labels is None:
                ll = log_mean_exp_over_classes(lambda y: self._elbo(x, y), x.shape[0], self.num_classes,
                                               self.device)
            else:
                ll = self._elbo(x, labels)
        return ll.cpu()

    def likelihood_info(self) -> dict[str, Any]:
        info = {
            "kind": self.likelihood_kind,
            "estimator": "iwae",
            "k": self.hparams.iw_samples,
            "decoder": self._decoder_name(),
            "variants": {"elbo": "analytic KL + one reparameterised sample of log p(x|z)"},
        }
        if self.class_conditional:
            k_y = self.samples_per_class(self.hparams.iw_samples)
            info.update(
                conditioning="marginal over classes, stratified importance sampling",
                conditioning_with_labels="label: IWAE-k of log p(x|y)",
                labels="uniform",
                prior="learned per-class diagonal Gaussian p(z|y)",
                k_per_class=k_y,
                k_effective=k_y * self.num_classes,
                variants={"elbo": "log (1/K) sum_y exp ELBO(x, y): analytic KL to p(z|y) + one reparameterised "
                                  "sample of log p(x|z,y) per class"},
            )
        return info

    def likelihood_variant_info(self, name: str) -> dict[str, Any]:
        if name != "elbo" or not self.class_conditional:
            return {}
        return {"estimator": "elbo", "conditioning": "marginal over classes, log-mean-exp of per-class ELBOs",
                "samples_per_class": 1}

    def likelihood_variants(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {"elbo": self.elbo}

    # ------------------------------------------------------------------ sampling and diagnostics
    def sampler_info(self) -> dict[str, Any]:
        draw = self.hparams.sample_pixels == "draw"
        if self.class_conditional:
            sampler = ("ancestral: y ~ uniform (or given), z ~ p(z|y), x ~ p(x|z,y)" if draw
                       else "y ~ uniform (or given), z ~ p(z|y), x = the per-pixel mode of p(x|z,y)")
        else:
            sampler = "ancestral: z ~ N(0, I), x ~ p(x|z)" if draw else "z ~ N(0, I), x = the per-pixel mode of p(x|z)"
        info = {
            "eval_mode": True,
            "sampler": sampler,
            "pixels": "decoder_draws" if draw else "decoder_modes",
            "decoder": self._decoder_name(),
            "network_evaluations": 1,  # one decoder pass
        }
        if self.class_conditional:
            info["labels"] = "uniform"
        return info

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

    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` uint8 images: z ~ p(z) and x from p(x|z); a conditional model draws uniform labels on
        ``generator`` unless ``labels`` are given, then z ~ p(z|y) and x from p(x|z,y)."""
        self.check_sample_count(n)
        labels = self.sample_labels(n, labels, generator)
        with self._eval_context():
            z = self.randn((n, self.latent_dim), generator)
            if labels is not None:
                mean, logvar = self.prior_params(labels)
                z = mean + torch.exp(0.5 * logvar) * z
            x = self.decoder_pixels(self.decode(z, labels), self.hparams.sample_pixels == "draw", generator)
        return x.cpu()

    def reconstructions(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 reconstructions: each pixel's most probable level under p(x | z = E_q[z|x]) (given the
        ``labels`` a conditional model needs, in both the encoder and the decoder)."""
        self.check_input(x)
        labels = self._require_labels(self.check_labels(labels, x.shape[0]))
        with self._eval_context():
            mean, _ = self.encode(x.to(self.device), labels)
            return self.decoder_pixels(self.decode(mean, labels), draw=False).cpu()

    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``[N, steps, C, H, W]``: decoder modes along the line between the posterior means (a
        conditional model encodes both ends and decodes the line with the same ``labels``)."""
        self.check_input(x_a, "x_a")
        self.check_input(x_b, "x_b")
        if x_a.shape[0] != x_b.shape[0] or steps < 2:
            raise ValueError(
                "need equally many images in x_a and x_b and steps >= 2, "
                f"got {x_a.shape[0]}, {x_b.shape[0]}, {steps}"
            )
        labels = self._require_labels(self.check_labels(labels, x_a.shape[0]))
        with self._eval_context():
            z_a, _ = self.encode(x_a.to(self.device), labels)
            z_b, _ = self.encode(x_b.to(self.device), labels)
            t = torch.linspace(0.0, 1.0, steps, device=self.device).view(1, steps, 1)
            z = (1 - t) * z_a.unsqueeze(1) + t * z_b.unsqueeze(1)
            line_labels = None if labels is None else labels.repeat_interleave(steps)
            x = self.decoder_pixels(self.decode(z.flatten(0, 1), line_labels), draw=False)
        return x.view(x_a.shape[0], steps, *self.data_shape).cpu()

    def active_units(self, x: torch.Tensor, batch_size: int = 500, labels: torch.Tensor | None = None) -> int:
        """Latents with Cov_x(E_q[z_j | x]) > ``active_unit_threshold`` over ``x`` (Burda et al. 2016); a
        conditional model encodes with ``labels``."""
        self.check_input(x)
        labels = self._require_labels(self.check_labels(labels, x.shape[0]))
        with self._eval_context():
            means = torch.cat(
                [
                    self.encode(x[i : i + batch_size].to(self.device),
                                None if labels is None else labels[i : i + batch_size])[0].double()
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
        x, y = batch
        terms = self.elbo_terms(x, labels=y if self.class_conditional else None)
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
        # The loss terms are the training objective's (given y for a conditional model); val/bpd bounds the
        # marginal log p(x) like the reported log_likelihood (stratified over classes when conditional).
        x, y = batch
        n = x.shape[0]
        labels = y if self.class_conditional else None
        with torch.autocast(device_type=self.device.type, enabled=False):
            terms = self.elbo_terms(x, torch.float64, labels)
            recon, kl = terms["recon_nats"], terms["kl_per_latent"].sum(1)
            nll_elbo = recon + kl
            k = self.hparams.val_iw_samples
            if self.class_conditional:
                nll_iw = -self._iw_bound(x, k, None, None)
            elif k > 1:
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
