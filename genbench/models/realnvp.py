"""Real NVP (Dinh et al. 2017): a multi-scale affine-coupling flow with an exact log-likelihood.

Images: pixels ``x in {0..L-1}`` are dequantized, ``v = (x + u)/L`` with ``u ~ U[0, 1)``, mapped to model
space by the logit preprocessing ``y = logit(alpha + (1 - 2 alpha) v)`` and then through the flow to a
standard normal ``z``. The log-likelihood is

    log p_z(f(y)) + log|det df/dy| + log|det dy/dv| - D log L,

the exact log-density of the dequantized point (change of variables) turned into a bound on the discrete
log-likelihood by :func:`genbench.metrics.likelihood.discrete_nll_from_density`: with one uniform
dequantization draw it is a single-sample estimate of the Jensen lower bound on log P(x) (Theis et al. 2016).
Exact is only the continuous density of the dequantized point; on the discrete pixels the record therefore
reports a ``bound`` (``likelihood_info`` says which density is exact, the draws and the seed).

``likelihood_variants`` adds ``iw_dequant``: the importance-weighted dequantization bound with K draws,
log P(x) >= E[log (1/K) sum_k p(v_k)] - D log L (as in Ho et al. 2019, "Flow++", with the uniform proposal),
which tightens towards log P(x) as K grows and is never looser in expectation than one draw.

Class-conditional option (``class_conditional=True``): the base distribution becomes
p(z | y) = N(mu_y, diag sigma_y^2) over the whole latent (the factored-out dimensions included), with a learnt
mean and log standard deviation per class, both zero at initialisation (the standard normal base). Then
log p(x | y) = log p(f(x) | y) + log|det df/dx| with the same preprocessing terms. Since f does not depend
on y, the marginal under the uniform class prior,

    log p(x) = logsumexp_y log p(f(x) | y) - log K + log|det df/dx|,

is exact (for the same dequantized density as the conditional one) and costs a single flow pass; this is
what ``log_likelihood(x)`` returns without labels, so a conditional flow's bits/dim compare with an
unconditional one's. ``conditional_couplings=True`` also feeds the class (a one-hot broadcast over the
pixels as extra input channels) to every s/t network, so f depends on y: the marginal is still exact, but
needs one flow pass per class (K times the cost of scoring). With several dequantization draws the marginal
is taken per draw and then averaged, the same Jensen bound on the discrete likelihood as without labels.
Training minimises -log p(x | y) with the batch's labels, and the logged ``train``/``val``/``test`` bits/dim of
a conditional model are of p(x | y) too; the marginal is what the evaluation's likelihood columns report.

2-D points (the toy2d densities, ``num_levels == 0``): an MLP-coupling flow on the raw points;
``log_likelihood`` is the continuous log-density in nats, compared with the density's true entropy.

Normalisation: ActNorm after every coupling in place of Real NVP's batch normalisation (data-dependent
initialisation on the first training batch, then a learnt affine map with the same function in training
and evaluation). Regularisation: the paper's L2 penalty (5e-5) on the weight-norm scale parameters of the
s/t networks, applied as Adam weight decay on exactly those parameters.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genbench.data import transforms
from genbench.distributions import standard_normal_log_prob
from genbench.metrics.likelihood import bpd, discrete_nll_from_density
from genbench.models.base import (
    LIKELIHOOD_BOUND,
    LIKELIHOOD_EXACT,
    GenerativeModel,
    eval_mode,
    log_mean_exp_over_classes,
)
from genbench.models.schedules import linear_warmup
from genbench.nets.coupling import MLPCouplingFlow, RealNVPFlow

TRAIN_LOSS = "train/loss"
TRAIN_BPD = "train/bpd"
VAL_LOSS = "val/loss"
VAL_BPD = "val/bpd"
TEST_BPD = "test/bpd"
VAL_NLL_NATS = "val/nll_nats"  # continuous data: NLL in nats per example


class RealNVP(GenerativeModel):
    """Real NVP on images (multi-scale conv flow) or on 2-D points (MLP couplings), chosen by ``data_shape``.

    Args:
        data_shape, num_levels, num_classes: linked from the datamodule.
        num_scales: scales of the multi-scale architecture (H and W divisible by ``2**(num_scales-1)``).
        mid_channels: width of the s/t ResNets.
        num_blocks: residual blocks per s/t ResNet.
        grow_width: double the s/t width after each squeeze (the paper's choice).
        alpha: the logit preprocessing's alpha (``logit(alpha + (1-2 alpha) v)``).
        mlp_couplings, mlp_hidden: depth and width of the 2-D flow (used when ``data_shape == (2,)``).
        lr: Adam learning rate, reached by a linear warm-up over ``warmup_steps``.
        lr_decay: multiplicative learning-rate decay per step after the warm-up (1.0 = constant).
        l2_scale: L2 coefficient on the weight-norm scales of the s/t nets (paper: 5e-5).
        class_conditional: model p(x | y) through a class-conditional base N(mu_y, diag sigma_y^2) (learnt,
            zero at initialisation); the marginal log p(x) stays exact and costs one flow pass.
        conditional_couplings: also give the class to every s/t network (needs ``class_conditional``): a
            more expressive p(x | y), but the exact marginal then costs one flow pass per class.
        temperature: standard deviation of the base normal when sampling (1.0 = the model itself); for a
            conditional base, the factor on sigma_y around the class mean mu_y.
        dequant_draws: uniform-dequantization draws whose Jensen bounds ``log_likelihood`` averages.
        iw_dequant_draws: K of the importance-weighted dequantization bound ``iw_dequant`` (0 = not reported).
        likelihood_seed: seed of those draws, so that ``log_likelihood`` is reproducible.
    """

    family = "flow"
    likelihood_kind = LIKELIHOOD_EXACT
    evaluation_hparams = ("temperature", "dequant_draws", "iw_dequant_draws", "likelihood_seed")

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        num_levels: int = 256,
        num_classes: int = 10,
        num_scales: int = 3,
        mid_channels: int = 32,
        num_blocks: int = 1,
        grow_width: bool = False,
        alpha: float = 1e-6,
        mlp_couplings: int = 8,
        mlp_hidden: int = 128,
        class_conditional: bool = False,
        conditional_couplings: bool = False,
        lr: float = 1e-3,
        warmup_steps: int = 200,
        lr_decay: float = 1.0,
        l2_scale: float = 5e-5,
        temperature: float = 1.0,
        dequant_draws: int = 1,
        iw_dequant_draws: int = 0,
        likelihood_seed: int = 0,
    ) -> None:
        super().__init__(data_shape, num_levels, num_classes)
        self.save_hyperparameters()
        self.check_conditional_init(class_conditional)
        if conditional_couplings and not class_conditional:
            raise ValueError("conditional_couplings=True needs class_conditional=True")
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if dequant_draws < 1:
            raise ValueError(f"dequant_draws must be >= 1, got {dequant_draws}")
        if iw_dequant_draws < 0:
            raise ValueError(f"iw_dequant_draws must be >= 0, got {iw_dequant_draws}")
        if warmup_steps < 0 or not 0.0 < lr_decay <= 1.0:
            raise ValueError(f"need warmup_steps >= 0 and 0 < lr_decay <= 1, got {warmup_steps}, {lr_decay}")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.dequant_draws = int(dequant_draws)
        self.iw_dequant_draws = int(iw_dequant_draws)
        self.likelihood_seed = int(likelihood_seed)
        self.nonfinite_samples = 0  # samples whose inverse pass gave a non-finite value (then clamped)
        context_size = self.num_classes if conditional_couplings else 0  # a class one-hot per s/t network
        if self.is_continuous:
            if len(self.data_shape) != 1:
                raise ValueError(f"continuous data must be points [D], got data_shape {self.data_shape}")
            self.flow = MLPCouplingFlow(self.data_shape[0], mlp_couplings, mlp_hidden, context_dim=context_size)
        else:
            if len(self.data_shape) != 3:
                raise ValueError(f"images must have data_shape (C, H, W), got {self.data_shape}")
            # exact only for the dequantized continuous density: on the discrete pixels it is a bound
            self.likelihood_kind = LIKELIHOOD_BOUND
            c, h, w = self.data_shape
            self.flow = RealNVPFlow(c, h, w, num_scales, mid_channels, num_blocks, grow_width, context_size)
        if class_conditional:
            # created after the flow, from zeros: the flow's parameters (and the RNG draws that initialise
            # them) are those of the unconditional model, and the base starts as the standard normal
            self.base_mean = nn.Parameter(torch.zeros(self.num_classes, self.flow.num_dims))
            self.base_log_std = nn.Parameter(torch.zeros(self.num_classes, self.flow.num_dims))

    # ------------------------------------------------------------------ densities
    def _preprocess(self, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantize + logit: model-space ``y`` (float32) and log|det dy/dv| (float64) per example."""
        v = transforms.dequantize(x, self.num_levels, generator=generator, dtype=torch.float64)
        y, logdet = transforms.logit_transform(v, self.alpha)
        return y.float(), logdet

    @property
    def conditional_couplings(self) -> bool:
        """Whether the couplings (so f itself) depend on the class, not only the base distribution."""
        return bool(self.hparams.get("conditional_couplings", False))

    def _context(self, labels: torch.Tensor) -> torch.Tensor | None:
        """What the couplings see of the labels: a class one-hot with ``conditional_couplings``, else None."""
        return F.one_hot(labels, self.num_classes).float() if self.conditional_couplings else None

    @staticmethod
    def _diagonal_normal_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """log N(z; mean, diag exp(2 log_std)) summed over the last dim, float64 (broadcasting)."""
        log_std = log_std.double()
        scaled = (z.double() - mean.double()) * torch.exp(-log_std)
        return -0.5 * (scaled.pow(2) + math.log(2 * math.pi)).sum(-1) - log_std.sum(-1)

    def _log_density(self, y: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact log-density of model-space ``y`` under the flow (nats per example): log p(y | labels) for a
        conditional model given labels, the exact marginal log p(y) without them."""
        if not self.class_conditional:
            z, logdet = self.flow(y)
            return standard_normal_log_prob(z.float()) + logdet.float()
        if labels is not None:
            z, logdet = self.flow(y, self._context(labels))
            base = self._diagonal_normal_log_prob(z, self.base_mean[labels], self.base_log_std[labels])
            return base + logdet.double()
        if self.conditional_couplings:  # f depends on y: one flow pass per class
            return log_mean_exp_over_classes(lambda given: self._log_density(y, given), len(y), self.num_classes,
                                             y.device)
        z, logdet = self.flow(y)  # one pass serves every class; [N, K] base terms, logsumexp over classes
        per_class = self._diagonal_normal_log_prob(z.unsqueeze(1), self.base_mean, self.base_log_std)
        return torch.logsumexp(per_class, 1) - math.log(self.num_classes) + logdet.double()

    def _nll_nats(self, x: torch.Tensor, generator: torch.Generator | None = None,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example NLL in nats (discrete bound for images, continuous NLL for points), float64; of
        p(x | labels) with labels, of the exact marginal without them (one dequantization for all classes)."""
        if self.is_continuous:
            return -self._log_density(x.float(), labels).double()
        y, logdet_pre = self._preprocess(x, generator)
        return discrete_nll_from_density(self._log_density(y, labels).double(), logdet_pre, self.num_dims,
                                         self.num_levels)

    def _dequant_draws(self, x: torch.Tensor, k: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``[k, N]``: log p(v_k) - D log L for k seeded uniform dequantizations v_k of the images ``x``.

        The stream restarts from ``likelihood_seed`` at every call, so the draws of ``iw_dequant`` begin with
        those of ``log_likelihood``: on the same images it is never looser than their Jensen average. With and
        without labels the draws are the same too, so conditional and marginal scores share their noise.
        """
        generator = torch.Generator(device=self.device).manual_seed(self.likelihood_seed)
        return torch.stack([-self._nll_nats(x, generator, labels) for _ in range(k)])

    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact flow log-density of a dequantized point, as a bound on log P(x) (see ``likelihood_info``);
        log p(x | labels) for a class-conditional model given labels, the exact marginal over classes without."""
        self.check_input(x)
        labels = self.check_labels(labels, len(x))
        with eval_mode(self):
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                x = x.to(self.device)
                if self.is_continuous:
                    return (-self._nll_nats(x, labels=labels)).cpu()
                return self._dequant_draws(x, self.dequant_draws, labels).mean(0).cpu()

    def iw_dequant_log_likelihood(self, x: torch.Tensor, k: int | None = None,
                                  labels: torch.Tensor | None = None) -> torch.Tensor:
        """The importance-weighted dequantization bound log (1/K) sum_k p(v_k) - D log L, K = ``k`` draws (of
        p(v | labels) given labels, of the exact marginal density of a class-conditional model without)."""
        k = self.iw_dequant_draws if k is None else int(k)
        if self.is_continuous or k < 1:
            raise ValueError("iw_dequant needs image data and K >= 1 draws")
        self.check_input(x)
        labels = self.check_labels(labels, len(x))
        with eval_mode(self):
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                draws = self._dequant_draws(x.to(self.device), k, labels)
                return (torch.logsumexp(draws, 0) - math.log(k)).cpu()

    def likelihood_variants(self) -> dict[str, Any]:
        if self.is_continuous or self.iw_dequant_draws < 1:
            return {}
        return {"iw_dequant": self.iw_dequant_log_likelihood}

    def likelihood_variant_info(self, name: str) -> dict[str, Any]:
        if name != "iw_dequant":
            return {}
        return {"estimator": "importance-weighted uniform dequantization, log-mean-exp over K draws",
                "K": self.iw_dequant_draws, "seed": self.likelihood_seed,
                "bound_on": "the discrete NLL -log P(x); tightens as K grows"}

    def likelihood_info(self) -> dict[str, Any]:
        info = self._unconditional_likelihood_info()
        if self.class_conditional:
            couplings = self.conditional_couplings
            info["conditioning"] = ("class-conditional base N(mu_y, diag sigma_y^2)"
                                    + (" and class one-hot into every coupling" if couplings else ""))
            info["marginal"] = ("without labels: the exact marginal log (1/K) sum_y p(x | y) of the same density, "
                                + (f"one flow pass per class ({self.num_classes} passes)" if couplings
                                   else "one flow pass (logsumexp over the class-conditional base)"))
        return info

    def _unconditional_likelihood_info(self) -> dict[str, Any]:
        if self.is_continuous:
            return {"kind": self.likelihood_kind, "estimator": "exact change of variables",
                    "units": "continuous log-density, nats per example (no dequantization)"}
        return {
            "kind": self.likelihood_kind,
            "estimator": "exact change of variables of the dequantized point",
            "exact_for": "the continuous density of the dequantized point v = (x + u) / L",
            "bound_on": "the discrete NLL -log P(x) of the pixels (Jensen over the dequantization noise u)",
            "dequantization": "uniform dequantization (Jensen bound on the discrete likelihood)",
            "draws": self.dequant_draws,
            "iw_dequant_K": self.iw_dequant_draws or None,
            "seed": self.likelihood_seed,
            "preprocessing": f"logit, alpha={self.alpha:g} (exact log-Jacobian counted)",
        }

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples (uint8 images, or float32 points) at ``temperature``, in eval mode, on the CPU; a
        class-conditional model draws class ``labels[i]`` for sample i (uniform classes without labels),
        z = mu_y + temperature * sigma_y * eps, x = f^{-1}(z; y)."""
        self.check_sample_count(n)
        labels = self.sample_labels(n, labels, generator)
        with eval_mode(self):
            with torch.autocast(device_type=self.device.type, enabled=False):
                shape = (n, self.flow.num_dims)
                if generator is not None:
                    z = torch.randn(shape, generator=generator, device=generator.device)
                else:
                    z = torch.randn(shape)
                z = self.temperature * z.to(self.device)
                if labels is None:
                    y = self.flow.inverse(z)
                else:
                    z = self.base_mean[labels] + torch.exp(self.base_log_std[labels]) * z
                    y = self.flow.inverse(z, self._context(labels))
                finite = torch.isfinite(y.flatten(1)).all(1) if n else torch.ones(0, dtype=torch.bool)
                self.nonfinite_samples += int((~finite).sum())
                y = torch.nan_to_num(y, nan=0.0, posinf=1e4, neginf=-1e4)
                if self.is_continuous:
                    return y.reshape(n, *self.data_shape).float().cpu()
                v = transforms.inverse_logit_transform(y.double(), self.alpha)
                return transforms.quantize(v, self.num_levels).reshape(n, *self.data_shape).cpu()

    def sampler_info(self) -> dict[str, Any]:
        info = {
            "eval_mode": True,
            "sampler": "inverse flow of z ~ N(0, temperature^2 I)",
            "temperature": self.temperature,
            "nonfinite_samples_clamped": self.nonfinite_samples,
            "network_evaluations": 1,  # one inverse pass of the flow
        }
        if self.class_conditional:
            info.update(sampler="inverse flow of z ~ N(mu_y, temperature^2 diag sigma_y^2)", labels="uniform")
        return info

    def sample_variants(self) -> dict[str, str]:
        """At a sampling temperature below 1, the model's own distribution (temperature 1) beside it."""
        if self.temperature == 1.0:
            return {}
        if self.class_conditional:
            return {"temperature_1": "z ~ N(mu_y, diag sigma_y^2): the model's own distribution"}
        return {"temperature_1": "z ~ N(0, I): the model's own distribution"}

    @contextlib.contextmanager
    def sample_variant(self, name: str) -> Iterator[None]:
        if name not in self.sample_variants():
            raise KeyError(f"RealNVP has no sample variant {name!r}; it has {sorted(self.sample_variants())}")
        main, self.temperature = self.temperature, 1.0
        try:
            yield
        finally:
            self.temperature = main

    # ------------------------------------------------------------------ Lightning
    def _loss(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, value): mean bits/dim (nats for points) of p(x | labels), or of p(x) without labels."""
        nll = self._nll_nats(x, labels=labels)
        if self.is_continuous:
            return nll.mean().float(), nll.mean()
        bits = bpd(nll, self.num_dims)
        return bits.mean().float(), bits.mean()

    def _batch_labels(self, y: torch.Tensor) -> torch.Tensor | None:
        """The batch's labels where the model conditions on them (it is trained on log p(x | y))."""
        return y.to(self.device, torch.int64) if self.class_conditional else None

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, _ = self._loss(x, self._batch_labels(y))
        self.log(TRAIN_LOSS, loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        with torch.autocast(device_type=self.device.type, enabled=False):
            loss, value = self._loss(x, self._batch_labels(y))
        self.log(VAL_LOSS, loss, prog_bar=True, sync_dist=True)
        self.log(VAL_NLL_NATS if self.is_continuous else VAL_BPD, value.float(), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        with torch.autocast(device_type=self.device.type, enabled=False):
            _, value = self._loss(x, self._batch_labels(y))
        self.log("test/nll_nats" if self.is_continuous else TEST_BPD, value.float(), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        decayed = [p for name, p in self.flow.named_parameters() if name.endswith("weight_g")]
        ids = {id(p) for p in decayed}
        others = [p for p in self.parameters() if id(p) not in ids]
        optimizer = torch.optim.Adam([
            {"params": decayed, "weight_decay": hp.l2_scale},
            {"params": others, "weight_decay": 0.0},
        ], lr=hp.lr)

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return linear_warmup(step, hp.warmup_steps)
            return hp.lr_decay ** (step - hp.warmup_steps)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)  # the flow and a conditional base

