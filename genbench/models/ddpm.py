"""DDPM (Ho et al. 2020) as a genbench model: a UNet trained on the Gaussian diffusion process.

* Training: t ~ U{0..T-1}, x_t = q_sample(x_0, t, eps), loss L_simple / L_vlb / hybrid
  (:meth:`GaussianDiffusion.training_losses`); AdamW with a linear warm-up; gradient clipping comes from
  the trainer config (``gradient_clip_val``). The loss is also logged per quarter of the timestep range
  (``train/loss_q0`` = the smallest t .. ``train/loss_q3``).
* EMA: ``self.ema`` is a copy of the UNet that the optimizer never sees (its parameters do not require
  grad); every optimizer step moves it towards the trained weights. Under DDP every rank applies the same
  update to identical weights, so the copies stay identical without communication. It is saved in the
  checkpoint; sampling and likelihood use it (``use_ema``).
* ``sample``: the sampler of :mod:`genbench.diffusion.samplers` named by ``sampler`` on ``sampling_steps``
  steps, recorded by :meth:`sampler_info`.
* ``log_likelihood``: minus the variational bound L_T + sum_t L_t + L_0 with the discretized Gaussian
  decoder on the dataset's grey levels, q/p math in float64 (:meth:`GaussianDiffusion.nll_bound`):
  ``exact`` (T network calls per image) or an unbiased estimate over K timesteps per image (``sampled``
  uniform, or ``stratified`` with log-spaced strata). Every image draws its noise and timesteps from its own
  generator, seeded by ``likelihood_seed`` and the image's bytes: the same checkpoint gives the same number
  whatever the batching, and the Monte Carlo noise of different images is independent, so a standard error
  over images covers it.
* Class-conditional option: a label embedding, labels replaced by the null label with probability
  ``label_dropout`` during training, classifier-free guidance at sampling time
  (eps = eps_null + guidance_scale (eps_y - eps_null), Ho & Salimans 2021); ``log_likelihood(x, labels)``
  is the bound of p(x | y), without labels the bound of the null-label model p(x). Unconditional by default.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import torch

from genbench.data.transforms import to_model_space, to_pixels
from genbench.diffusion import GaussianDiffusion, make_betas
from genbench.diffusion import sample as diffusion_sample
from genbench.diffusion.modes import LikelihoodEstimator, LossType, PCPredictor, Sampler, parse
from genbench.diffusion.samplers import sampler_options, sampler_record
from genbench.metrics.likelihood import bpd
from genbench.models.base import LIKELIHOOD_BOUND, GenerativeModel, LikelihoodUnavailable, eval_mode
from genbench.models.schedules import ema_decay_at, ema_update, linear_warmup
from genbench.nets.unet import UNet

TRAIN_LOSS = "train/loss"
TRAIN_LOSS_QUARTILE = "train/loss_q{}"  # .format(0..3): t in the k-th quarter of 0..T-1
TRAIN_MSE = "train/mse"
TRAIN_VLB = "train/vlb"
VAL_LOSS = "val/loss"
VAL_BPD = "val/bpd"
TEST_BPD = "test/bpd"
VAL_SEED = 12345  # timesteps and noise of val/loss are the same at every validation


def image_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One CPU generator per image of ``x``, seeded by ``seed`` and the image's bytes: a Monte Carlo bound
    drawn from them gives an image the same number whatever batch it is scored in."""
    seed_bytes = int(seed).to_bytes(8, "little", signed=True)
    generators = []
    for image in x.detach().cpu().contiguous().numpy():
        digest = hashlib.blake2b(image.tobytes() + seed_bytes, digest_size=8).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1)))
    return generators


class DDPM(GenerativeModel):
    """Denoising diffusion probabilistic model.

    Args:
        data_shape, num_levels, num_classes: linked from the datamodule (images only: ``num_levels >= 2``).
        base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout, num_heads: the UNet
            (:class:`genbench.nets.unet.UNet`); ``attention_resolutions`` are spatial sizes (MNIST: 28, 14, 7).
        num_timesteps: T.
        beta_schedule: ``linear`` (``beta_start`` .. ``beta_end``) or ``cosine``.
        model_output: ``eps``, ``x_start`` or ``v``.
        var_type: ``fixed_small``, ``fixed_large`` or ``learned_range``.
        loss_type: ``simple``, ``vlb`` or ``hybrid`` (needs ``learned_range``); ``vlb_weight`` = lambda.
        min_snr_gamma: min-SNR-gamma weighting of the MSE term (Hang et al. 2023); ``None`` = unweighted.
        clip_denoised: clip the predicted x_0 to [-1, 1] in sampling and in the bound.
        class_conditional: condition on labels; ``label_dropout`` = probability of the null label in
            training; ``guidance_scale`` = classifier-free guidance weight at sampling (1 = no guidance).
        lr, weight_decay, warmup_steps: AdamW and its linear warm-up (in optimizer steps).
        ema_decay: decay of the EMA weights; with ``ema_warmup`` the decay at step n is
            min(ema_decay, (1 + n) / (10 + n)), so short runs are not dominated by the initial weights.
        use_ema: sample and score with the EMA weights (else the trained ones).
        sampler, sampling_steps, ddim_eta: how :meth:`sample` draws (``ancestral``, ``ddim``, ``sde``, ``ode``,
            ``pc``).
        pc_predictor, pc_corrector_steps, pc_snr: the ``pc`` sampler's predictor (``sde`` or ``ancestral``),
            Langevin corrector steps per step and signal-to-noise ratio r (Song et al. 2021b).
        likelihood_estimator, likelihood_timesteps: ``exact``, ``sampled`` or ``stratified`` with K timesteps.
        likelihood_seed: seed of the bound's Monte Carlo draws.
        val_bpd_images, val_bpd_timesteps: the cheap ``val/bpd`` (stratified estimator) on the first images
            of the first validation batch; 0 images turns it off.
    """

    family = "diffusion"
    likelihood_kind = LIKELIHOOD_BOUND
    adjustable_sampling_steps = True
    evaluation_hparams = ("guidance_scale", "use_ema", "sampler", "sampling_steps", "ddim_eta", "pc_predictor",
                          "pc_corrector_steps", "pc_snr", "likelihood_estimator", "likelihood_timesteps",
                          "likelihood_seed")

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        num_levels: int = 256,
        num_classes: int = 10,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (7,),
        dropout: float = 0.1,
        num_heads: int = 1,
        num_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        model_output: str = "eps",
        var_type: str = "fixed_large",
        loss_type: str = "simple",
        vlb_weight: float = 0.001,
        min_snr_gamma: float | None = None,
        clip_denoised: bool = True,
        class_conditional: bool = False,
        label_dropout: float = 0.1,
        guidance_scale: float = 1.0,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        use_ema: bool = True,
        sampler: str = "ddim",
        sampling_steps: int = 50,
        ddim_eta: float = 0.0,
        pc_predictor: str = "sde",
        pc_corrector_steps: int = 1,
        pc_snr: float = 0.16,
        likelihood_estimator: str = "stratified",
        likelihood_timesteps: int = 16,
        likelihood_seed: int = 0,
        val_bpd_images: int = 64,
        val_bpd_timesteps: int = 8,
    ) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.save_hyperparameters()
        if self.is_continuous or len(self.data_shape) != 3:
            raise ValueError(
                f"DDPM models discrete images [C, H, W] (num_levels >= 2); got data_shape={list(self.data_shape)}, "
                f"num_levels={self.num_levels}"
            )
        parse(Sampler, sampler, "sampler")
        if sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {sampling_steps}")
        parse(PCPredictor, pc_predictor, "pc_predictor")
        if pc_corrector_steps < 0 or not pc_snr > 0:
            raise ValueError(f"need pc_corrector_steps >= 0 and pc_snr > 0, got {pc_corrector_steps} and {pc_snr}")
        parse(LikelihoodEstimator, likelihood_estimator, "likelihood_estimator")
        if likelihood_timesteps < 1 or val_bpd_timesteps < 1:
            raise ValueError("likelihood_timesteps and val_bpd_timesteps must be >= 1")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        self.check_conditional_init(class_conditional)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

        self.diffusion = GaussianDiffusion(
            make_betas(beta_schedule, num_timesteps, beta_start, beta_end),
            model_output=model_output,
            var_type=var_type,
            loss_type=loss_type,
            vlb_weight=vlb_weight,
            num_levels=self.num_levels,
            min_snr_gamma=min_snr_gamma,
        )
        channels, height, _ = self.data_shape
        self.net = UNet(
            in_channels=channels,
            out_channels=self.diffusion.output_channels(channels),
            image_size=height,
            base_channels=base_channels,
            channel_mults=tuple(channel_mults),
            num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(attention_resolutions),
            dropout=dropout,
            num_heads=num_heads,
            num_classes=self.num_classes if class_conditional else 0,
        )
        self.ema = copy.deepcopy(self.net).requires_grad_(False)

    # ------------------------------------------------------------------ network as a function of (x_t, t)
    def _model_fn(
        self, net: UNet, labels: torch.Tensor | None = None, guidance_scale: float = 1.0
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        channels = self.data_shape[0]
        conditional = self.hparams.class_conditional

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x = x_t.to(torch.float32)
            if not conditional:
                return net(x, t)
            if labels is None or guidance_scale == 1.0:
                return net(x, t, labels)
            null = torch.full_like(labels, self.num_classes)
            cond, uncond = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            guided = uncond[:, :channels] + guidance_scale * (cond[:, :channels] - uncond[:, :channels])
            return torch.cat([guided, cond[:, channels:]], dim=1)

        return fn

    @property
    def sampling_net(self) -> UNet:
        return self.ema if self.hparams.use_ema else self.net

    # ------------------------------------------------------------------ training
    def _losses(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x_start = to_model_space(x, self.num_levels)
        n, T = x.shape[0], self.diffusion.num_timesteps
        if generator is None:
            t = torch.randint(0, T, (n,), device=self.device)
            noise = torch.randn_like(x_start)
        else:
            t = torch.randint(0, T, (n,), generator=generator).to(self.device)
            noise = torch.randn(x_start.shape, generator=generator).to(self.device)
        labels = None
        if self.hparams.class_conditional:
            labels = y.to(self.device, torch.int64)
            if self.training and self.hparams.label_dropout > 0:
                drop = torch.rand(n, device=self.device) < self.hparams.label_dropout
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        terms = self.diffusion.training_losses(self._model_fn(self.net, labels), x_start, t, noise)
        terms["t"] = t
        return terms

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        terms = self._losses(x, y)
        loss = terms["loss"].mean()
        self.log(TRAIN_LOSS, loss, prog_bar=True)
        for key, name in (("mse", TRAIN_MSE), ("vlb", TRAIN_VLB)):
            if key in terms and self.hparams.loss_type != LossType.SIMPLE:
                self.log(name, terms[key].mean())
        quartile = terms["t"] * 4 // self.diffusion.num_timesteps
        for k in range(4):
            mask = quartile == k
            if bool(mask.any()):
                self.log(TRAIN_LOSS_QUARTILE.format(k), terms["loss"][mask].mean().detach())
        return loss

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay * ema + (1 - decay) * weights (the same on every rank)."""
        ema_update(self.ema.parameters(), self.net.parameters(), decay)

    def ema_decay_at(self, step: int) -> float:
        return ema_decay_at(self.hparams.ema_decay, step, self.hparams.ema_warmup)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The EMA follows each optimizer step inside the step itself, so a checkpoint written at the end of a
        # batch already holds it (a resumed run must not miss one). Lightning counts the step only after this
        # hook returns: the step just taken is global_step + 1.
        super().optimizer_step(*args, **kwargs)
        self.update_ema(self.ema_decay_at(self.trainer.global_step + 1))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        generator = torch.Generator().manual_seed(VAL_SEED + batch_idx)
        self.log(VAL_LOSS, self._losses(x, y, generator)["loss"].mean(), sync_dist=True, prog_bar=True)
        if batch_idx == 0 and self.hparams.val_bpd_images > 0:
            images = x[: self.hparams.val_bpd_images]
            ll = self._log_likelihood(images, LikelihoodEstimator.STRATIFIED.value, self.hparams.val_bpd_timesteps)
            self.log(VAL_BPD, bpd(-ll.mean(), self.num_dims).float(), sync_dist=True, prog_bar=True,
                     batch_size=images.shape[0])

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, _ = batch
        ll = self.log_likelihood(x)
        self.log(TEST_BPD, bpd(-ll.mean(), self.num_dims).float(), sync_dist=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup = self.hparams.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: linear_warmup(step, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ the contract
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images (uint8, CPU) from the EMA weights; a class-conditional model draws uniform labels
        unless ``labels`` (int64 ``[n]``) are given, and applies classifier-free guidance."""
        self.check_sample_count(n)
        if n == 0:
            return torch.zeros((0, *self.data_shape), dtype=torch.uint8)
        labels = self.sample_labels(n, labels, generator)
        with eval_mode(self):
            fn = self._model_fn(self.sampling_net, labels, self.hparams.guidance_scale)
            with torch.autocast(device_type=self.device.type, enabled=False):
                x = diffusion_sample(self.diffusion, fn, (n, *self.data_shape), generator=generator, device=self.device,
                                     clip_denoised=self.hparams.clip_denoised, **sampler_options(self.hparams))
            return to_pixels(x, self.num_levels).cpu()

    def set_sampling_steps(self, steps: int) -> None:
        """Sample with ``steps`` steps of the configured sampler from now on (recorded by sampler_info)."""
        if int(steps) < 1:
            raise ValueError(f"sampling steps must be >= 1, got {steps}")
        self.hparams.sampling_steps = int(steps)

    def _image_generators(self, x: torch.Tensor) -> list[torch.Generator]:
        """One CPU generator per image, seeded by ``likelihood_seed`` and the image's bytes."""
        return image_generators(x, self.hparams.likelihood_seed)

    @torch.no_grad()
    def _log_likelihood(self, x: torch.Tensor, estimator: str, num_timesteps: int,
                        labels: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x)
        labels = self.check_labels(labels, len(x))
        if labels is None and self.hparams.class_conditional and self.hparams.label_dropout == 0:
            raise LikelihoodUnavailable("a class-conditional DDPM trained without label dropout has no unconditional p(x)")
        with eval_mode(self):
            with torch.autocast(device_type=self.device.type, enabled=False):
                x_start = to_model_space(x.to(self.device), self.num_levels, torch.float64)
                terms = self.diffusion.nll_bound(
                    self._model_fn(self.sampling_net, labels),
                    x_start,
                    estimator=estimator,
                    num_sampled=num_timesteps,
                    generator=self._image_generators(x),
                    clip_denoised=self.hparams.clip_denoised,
                )
            return (-terms["total"]).to(torch.float64).to(x.device)

    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """float64 ``[N]``: minus the variational bound in nats per image (a lower bound on log P(x)).

        A class-conditional model scores log p(x | y) with ``labels`` (the label-conditioned network, no
        guidance: guidance changes the sampler, not the model), and log p(x) without them through the null
        label the network learned by label dropout: a second model in the same weights, so the difference of
        the two bounds is not bounded by log K the way an exact marginal would be."""
        return self._log_likelihood(x, self.hparams.likelihood_estimator, self.hparams.likelihood_timesteps, labels)

    @property
    def has_guidance(self) -> bool:
        # guidance needs the null-label network, which only label dropout trains
        return bool(self.hparams.class_conditional and self.hparams.label_dropout > 0)

    def set_guidance_scale(self, scale: float) -> None:
        """Sample with classifier-free guidance weight ``scale`` from now on (0 = the null-label model,
        1 = the conditional model, > 1 = sharpened towards the class)."""
        if not self.has_guidance:
            super().set_guidance_scale(scale)
        if not float(scale) >= 0.0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.hparams.guidance_scale = float(scale)

    def current_guidance_scale(self) -> float:
        if not self.has_guidance:
            return super().current_guidance_scale()
        return float(self.hparams.guidance_scale)

    def likelihood_info(self) -> dict[str, Any]:
        estimator = self.hparams.likelihood_estimator
        return {
            "kind": self.likelihood_kind,
            "bound": "L_T + sum_{t>=2} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) + L_0, discretized Gaussian decoder",
            "estimator": estimator,
            "K": None if estimator == LikelihoodEstimator.EXACT else self.hparams.likelihood_timesteps,
            "T": self.diffusion.num_timesteps,
            "network_calls_per_image": (
                self.diffusion.num_timesteps if estimator == LikelihoodEstimator.EXACT else self.hparams.likelihood_timesteps + 1
            ),
            "var_type": self.hparams.var_type,
            "clip_denoised": self.hparams.clip_denoised,
            "ema": self.hparams.use_ema,
            "seed": self.hparams.likelihood_seed,
            "conditioning": "null label" if self.hparams.class_conditional else "none",
        }

    def sampler_info(self) -> dict[str, Any]:
        info = {"eval_mode": True, **sampler_record(self.hparams, self.diffusion.num_timesteps),
                "ema": self.hparams.use_ema, "ema_decay": self.hparams.ema_decay,
                "clip_denoised": self.hparams.clip_denoised}
        if self.hparams.class_conditional:
            info.update(labels="uniform", guidance_scale=self.hparams.guidance_scale)
        if self.hparams.class_conditional and self.hparams.guidance_scale != 1.0:
            info["network_evaluations"] *= 2  # guidance adds an unconditional pass
        return info
