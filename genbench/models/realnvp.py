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

from genbench.data import transforms
from genbench.distributions import standard_normal_log_prob
from genbench.metrics.likelihood import bpd, discrete_nll_from_density
from genbench.models.base import LIKELIHOOD_BOUND, LIKELIHOOD_EXACT, GenerativeModel, eval_mode
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
        temperature: standard deviation of the base normal when sampling (1.0 = the model itself).
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
        if self.is_continuous:
            if len(self.data_shape) != 1:
                raise ValueError(f"continuous data must be points [D], got data_shape {self.data_shape}")
            self.flow = MLPCouplingFlow(self.data_shape[0], mlp_couplings, mlp_hidden)
        else:
            if len(self.data_shape) != 3:
                raise ValueError(f"images must have data_shape (C, H, W), got {self.data_shape}")
            # exact only for the dequantized continuous density: on the discrete pixels it is a bound
            self.likelihood_kind = LIKELIHOOD_BOUND
            c, h, w = self.data_shape
            self.flow = RealNVPFlow(c, h, w, num_scales, mid_channels, num_blocks, grow_width)

    # ------------------------------------------------------------------ densities
    def _preprocess(self, x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantize + logit: model-space ``y`` (float32) and log|det dy/dv| (float64) per example."""
        v = transforms.dequantize(x, self.num_levels, generator=generator, dtype=torch.float64)
        y, logdet = transforms.logit_transform(v, self.alpha)
        return y.float(), logdet

    def _log_density(self, y: torch.Tensor) -> torch.Tensor:
        """Exact log-density of model-space ``y`` under the flow (nats per example)."""
        z, logdet = self.flow(y)
        return standard_normal_log_prob(z.float()) + logdet.float()

    def _nll_nats(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example NLL in nats (discrete bound for images, continuous NLL for points), float64."""
        if self.is_continuous:
            return -self._log_density(x.float()).double()
        y, logdet_pre = self._preprocess(x, generator)
        return discrete_nll_from_density(self._log_density(y).double(), logdet_pre, self.num_dims, self.num_levels)

    def _dequant_draws(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``[k, N]``: log p(v_k) - D log L for k seeded uniform dequantizations v_k of the images ``x``.

        The stream restarts from ``likelihood_seed`` at every call, so the draws of ``iw_dequant`` begin with
        those of ``log_likelihood``: on the same images it is never looser than their Jensen average.
        """
        generator = torch.Generator(device=self.device).manual_seed(self.likelihood_seed)
        return torch.stack([-self._nll_nats(x, generator) for _ in range(k)])

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact flow log-density of a dequantized point, as a bound on log P(x) (see ``likelihood_info``)."""
        self.check_input(x)
        with eval_mode(self):
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                x = x.to(self.device)
                if self.is_continuous:
                    return (-self._nll_nats(x)).cpu()
                return self._dequant_draws(x, self.dequant_draws).mean(0).cpu()

    def iw_dequant_log_likelihood(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """The importance-weighted dequantization bound log (1/K) sum_k p(v_k) - D log L, K = ``k`` draws."""
        k = self.iw_dequant_draws if k is None else int(k)
        if self.is_continuous or k < 1:
            raise ValueError("iw_dequant needs image data and K >= 1 draws")
        self.check_input(x)
        with eval_mode(self):
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                draws = self._dequant_draws(x.to(self.device), k)
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
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples (uint8 images, or float32 points) at ``temperature``, in eval mode, on the CPU."""
        self.check_sample_count(n)
        with eval_mode(self):
            with torch.autocast(device_type=self.device.type, enabled=False):
                shape = (n, self.flow.num_dims)
                if generator is not None:
                    z = torch.randn(shape, generator=generator, device=generator.device)
                else:
                    z = torch.randn(shape)
                y = self.flow.inverse(self.temperature * z.to(self.device))
                finite = torch.isfinite(y.flatten(1)).all(1) if n else torch.ones(0, dtype=torch.bool)
                self.nonfinite_samples += int((~finite).sum())
                y = torch.nan_to_num(y, nan=0.0, posinf=1e4, neginf=-1e4)
                if self.is_continuous:
                    return y.reshape(n, *self.data_shape).float().cpu()
                v = transforms.inverse_logit_transform(y.double(), self.alpha)
                return transforms.quantize(v, self.num_levels).reshape(n, *self.data_shape).cpu()

    def sampler_info(self) -> dict[str, Any]:
        return {
            "eval_mode": True,
            "sampler": "inverse flow of z ~ N(0, temperature^2 I)",
            "temperature": self.temperature,
            "nonfinite_samples_clamped": self.nonfinite_samples,
            "network_evaluations": 1,  # one inverse pass of the flow
        }

    def sample_variants(self) -> dict[str, str]:
        """At a sampling temperature below 1, the model's own distribution (temperature 1) beside it."""
        if self.temperature == 1.0:
            return {}
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
    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nll = self._nll_nats(x)
        if self.is_continuous:
            return nll.mean().float(), nll.mean()
        bits = bpd(nll, self.num_dims)
        return bits.mean().float(), bits.mean()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        loss, _ = self._loss(x)
        self.log(TRAIN_LOSS, loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        with torch.autocast(device_type=self.device.type, enabled=False):
            loss, value = self._loss(x)
        self.log(VAL_LOSS, loss, prog_bar=True, sync_dist=True)
        self.log(VAL_NLL_NATS if self.is_continuous else VAL_BPD, value.float(), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, _ = batch
        with torch.autocast(device_type=self.device.type, enabled=False):
            _, value = self._loss(x)
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
        return sum(p.numel() for p in self.flow.parameters() if p.requires_grad)

