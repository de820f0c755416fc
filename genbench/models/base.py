"""The contract every generative model in genbench keeps.

The evaluation harness only ever calls what is defined here, so it never branches on the model type:

* ``sample(n, generator=None)`` returns ``torch.uint8`` images ``[n, C, H, W]`` on the dataset's pixel grid
  (continuous datasets such as ``toy2d`` return float32 points ``[n, 2]``);
* ``log_likelihood(x)`` returns float64 log-likelihoods in nats per example of the *discrete* data: a lower
  bound for the VAE, the DDPM and a dequantized flow (exact only for a flow on continuous points;
  ``likelihood_kind`` says which), and for GANs it raises
  :class:`LikelihoodUnavailable` because the model defines no density;
* ``family``, ``likelihood_kind`` and :meth:`describe` give the metadata the result record stores.

A class-conditional model (``class_conditional=True``, the ``class_conditional`` capability) also takes int64
class labels ``[n]``: ``sample(n, generator, labels)`` draws from p(x | y) (uniform labels when ``labels`` is
None, so its unlabelled samples are comparable with an unconditional model's), and ``log_likelihood(x, labels)``
scores log p(x | y); without labels it scores the marginal log p(x) = log sum_y p(y) p(x | y) (or the
family's own estimate of it). An unconditional model rejects labels.

Models log through ``self.log`` only; nothing W&B-specific lives in ``genbench.models``.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import lightning as L
import torch

from genbench.capabilities import CLASS_CONDITIONAL, GUIDANCE, LIKELIHOOD, SAMPLER_STEPS
from genbench.data.transforms import check_images

LIKELIHOOD_EXACT = "exact"  # the model's own exact log-likelihood of the data it is scored on
LIKELIHOOD_BOUND = "bound"  # a variational / importance-weighted lower bound on log-likelihood
LIKELIHOOD_NONE = "none"  # no density (GAN)

# The project's own families. The list is open: a model outside it declares its own ``family`` (a short
# lower-case name, e.g. "autoregressive"), which the record and the leaderboard show as given.
FAMILIES = ("gan", "vae", "flow", "diffusion", "latent_diffusion")
FAMILY_NAME = re.compile(r"[a-z][a-z0-9_-]*")


class LikelihoodUnavailable(NotImplementedError):
    """Raised by ``log_likelihood`` of a model that defines no density (GANs)."""


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode for the block, then back in the mode it was in (an exception included)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class GenerativeModel(L.LightningModule, abc.ABC):
    """Base class of every genbench model.

    Subclasses call ``super().__init__(data_shape=..., num_levels=..., num_classes=...)`` and then
    ``self.save_hyperparameters()``. ``data_shape``, ``num_levels`` and ``num_classes`` are linked from the
    datamodule by the CLI, so configs never repeat them.
    """

    family: ClassVar[str] = ""
    likelihood_kind: ClassVar[str] = LIKELIHOOD_NONE
    # True for iterative samplers whose step count set_sampling_steps changes (the sampler-sweep suite)
    adjustable_sampling_steps: ClassVar[bool] = False
    # __init__ arguments that change only how the trained weights are sampled or scored (sampler, steps,
    # temperature, likelihood estimator...), never what is trained: a finished run may be re-evaluated
    # (resumed) with other values, and its record states the values used.
    evaluation_hparams: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_shape: tuple[int, ...], num_levels: int, num_classes: int) -> None:
        super().__init__()
        if not isinstance(self.family, str) or not FAMILY_NAME.fullmatch(self.family):
            raise TypeError(f"{type(self).__name__}.family must name the model's family in lower case (e.g. one of "
                            f"{', '.join(FAMILIES)}, or your own such as 'autoregressive'), got {self.family!r}")
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_levels = int(num_levels)
        self.num_classes = int(num_classes)

    # ------------------------------------------------------------------ the contract
    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples as uint8 ``[n, *data_shape]`` (float32 for continuous data), in eval mode; a
        class-conditional model draws class ``labels[i]`` for sample i (see the module docstring)."""

    @abc.abstractmethod
    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """float64 ``[N]``: log P(x) in nats per example (exact or a lower bound, see ``likelihood_kind``);
        log P(x | labels) for a class-conditional model given labels."""

    def likelihood_info(self) -> dict[str, Any]:
        """What ``log_likelihood`` computes: ``kind`` plus family-specific protocol (estimator, k, T...)."""
        return {"kind": self.likelihood_kind}

    def likelihood_variants(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Further log-likelihood estimates the record reports beside the main one, by name.

        Each maps uint8 ``x`` to float64 nats per example, like :meth:`log_likelihood` (e.g. the VAE's
        ``{"elbo": ...}`` beside its importance-weighted bound). The harness scores them on the same images
        and records them as ``bpd_<name>``.
        """
        return {}

    def likelihood_variant_info(self, name: str) -> dict[str, Any]:
        """What the variant ``name`` of :meth:`likelihood_variants` computes (estimator, K...), for the record."""
        return {}

    @property
    def capabilities(self) -> frozenset[str]:
        """What the model declares it can do (:mod:`genbench.capabilities`): ``likelihood``
        unless ``likelihood_kind`` is ``none``, ``sampler_steps`` with ``adjustable_sampling_steps``,
        ``class_conditional`` with :attr:`class_conditional`, ``guidance`` with :attr:`has_guidance`. The
        evaluation suites are chosen from these, never by calling a method to see whether it raises."""
        caps = set()
        if self.likelihood_kind != LIKELIHOOD_NONE:
            caps.add(LIKELIHOOD)
        if self.adjustable_sampling_steps:
            caps.add(SAMPLER_STEPS)
        if self.class_conditional:
            caps.add(CLASS_CONDITIONAL)
        if self.has_guidance:
            caps.add(GUIDANCE)
        return frozenset(caps)

    @property
    def class_conditional(self) -> bool:
        """Whether the model is p(x | y): the ``class_conditional`` init argument of the families that have one."""
        return bool(getattr(self, "hparams", {}).get("class_conditional", False))

    @property
    def has_guidance(self) -> bool:
        """Whether :meth:`set_guidance_scale` changes how :meth:`sample` draws (classifier-free guidance)."""
        return False

    def set_guidance_scale(self, scale: float) -> None:
        """Sample with guidance weight ``scale`` from now on (models with :attr:`has_guidance`). Others raise."""
        raise NotImplementedError(f"{type(self).__name__} has no classifier-free guidance")

    def current_guidance_scale(self) -> float:
        """The guidance weight :meth:`sample` uses now (1 = the conditional model itself)."""
        raise NotImplementedError(f"{type(self).__name__} has no classifier-free guidance")

    def set_sampling_steps(self, steps: int) -> None:
        """Use ``steps`` sampler steps from now on (iterative samplers only: DDPM). Others raise."""
        raise NotImplementedError(f"{type(self).__name__} has no adjustable number of sampler steps")

    def sampler_info(self) -> dict[str, Any]:
        """How ``sample`` draws (sampler, steps, EMA, eval mode...), recorded beside sample metrics."""
        return {"eval_mode": True}

    def sample_variants(self) -> dict[str, str]:
        """Other ways of drawing samples from the same weights that the record scores beside the main
        sampler, by name -> description (e.g. the VAE's decoder modes beside its pixel draws). The main
        sampler is the one the config declares before the run; a variant is reported as ``fid_<name>`` and
        never replaces it."""
        return {}

    @contextmanager
    def sample_variant(self, name: str) -> Iterator[None]:
        """Within the block, :meth:`sample` draws with the variant ``name`` of :meth:`sample_variants`."""
        raise KeyError(f"{type(self).__name__} has no sample variant {name!r}; it has {sorted(self.sample_variants())}")
        yield  # pragma: no cover

    # ------------------------------------------------------------------ shared helpers
    @property
    def is_continuous(self) -> bool:
        return self.num_levels == 0

    @property
    def num_dims(self) -> int:
        return math.prod(self.data_shape)

    def check_input(self, x: torch.Tensor, name: str = "x") -> None:
        """Validate a batch given to the contract (dtype, shape, range) with a clear error."""
        if self.is_continuous:
            if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
                raise TypeError(f"{name} must be a floating-point tensor for continuous data, got {getattr(x, 'dtype', type(x))}")
            if tuple(x.shape[1:]) != self.data_shape:
                raise ValueError(f"{name} must have shape [N, {', '.join(map(str, self.data_shape))}], got {list(x.shape)}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{name} contains non-finite values")
        else:
            check_images(x, self.data_shape, self.num_levels, name)

    def check_sample_count(self, n: int) -> None:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")

    def check_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """``labels`` as int64 ``[n]`` on the model's device, or None; an error names what is wrong (labels
        for an unconditional model, a shape other than ``[n]``, a class outside ``0..num_classes-1``)."""
        if labels is None:
            return None
        if not self.class_conditional:
            raise ValueError(f"labels given to an unconditional {type(self).__name__}; train it with "
                             "class_conditional=true (make bench COND=1) to condition on classes")
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dtype.is_complex:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"labels must have shape [{n}], got {list(labels.shape)}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be classes 0..{self.num_classes - 1}, got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels.to(device=self.device, dtype=torch.int64)

    def sample_labels(self, n: int, labels: torch.Tensor | None,
                      generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The labels ``sample`` conditions on: ``labels`` checked, uniform classes drawn on ``generator`` where
        a class-conditional model is given none, None for an unconditional model."""
        labels = self.check_labels(labels, n)
        if labels is None and self.class_conditional:
            device = generator.device if generator is not None else self.device
            labels = torch.randint(0, self.num_classes, (n,), generator=generator, device=device).to(self.device)
        return labels

    def check_conditional_init(self, class_conditional: bool) -> None:
        """Reject ``class_conditional=True`` on data without class labels, before anything is built."""
        if class_conditional and self.num_classes < 2:
            raise ValueError(f"class_conditional=True needs a dataset with class labels (num_classes >= 2), "
                             f"got num_classes={self.num_classes}; drop COND=1 / class_conditional for this data")

    def randn(self, shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard-normal noise drawn on ``generator``'s device (so a seed gives the same draws wherever
        the model runs), or on the model's device without one; returned on the model's device."""
        device = generator.device if generator is not None else self.device
        return torch.randn(tuple(shape), generator=generator, device=device).to(self.device)

    def num_parameters(self) -> int:
        """Trainable parameters of the model that is sampled / scored (EMA copies are not counted twice)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def describe(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model": type(self).__name__,
            "class_conditional": self.class_conditional,
            "params": self.num_parameters(),
            "likelihood": self.likelihood_info(),
            "sampler": self.sampler_info(),
        }

    # ------------------------------------------------------------------ exact resumption
    # A checkpoint carries the RNG streams the training step draws from (noise, timesteps, dropout,
    # latents), so that a run resumed from it draws what an uninterrupted run would have drawn. Validation
    # runs on a copy of those streams and leaves them untouched: a resumed run skips the validation that
    # was due at its checkpoint, and must still see the same training randomness afterwards.
    # Under DDP, ``seed_everything`` seeds every rank alike; each rank > 0 then moves to its own stream
    # (seed + 1000003 * rank), so that ranks draw different noise for their different data, and the
    # checkpoint holds every rank's torch (and CUDA) stream.
    def _world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _own_rank_stream(self) -> None:
        world, rank = self._world()
        if world > 1 and rank > 0:
            torch.manual_seed(torch.initial_seed() + RANK_SEED_STRIDE * rank)

    def on_fit_start(self) -> None:
        self._own_rank_stream()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = rng_states()
        world, _ = self._world()
        if world > 1:  # every rank builds the checkpoint (rank 0 writes it): gather each rank's streams
            states["per_rank"] = {"torch": self._gather_state(states["torch"])}
            if torch.cuda.is_available() and torch.cuda.is_initialized() and self.device.type == "cuda":
                states["per_rank"]["cuda"] = self._gather_state(torch.cuda.get_rng_state(self.device))
        checkpoint[RNG_KEY] = states

    def _gather_state(self, state: torch.Tensor) -> torch.Tensor:
        gathered = self.trainer.strategy.all_gather(state.to(self.device))
        return gathered.cpu().reshape(self._world()[0], -1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_rng = checkpoint.get(RNG_KEY)

    def on_train_start(self) -> None:
        pending = getattr(self, "_pending_rng", None)
        if pending is None:
            return
        self._pending_rng = None
        set_rng_states(pending)
        world, rank = self._world()
        per_rank = pending.get("per_rank") or {}
        if world > 1 and "torch" in per_rank and len(per_rank["torch"]) == world:
            torch.set_rng_state(per_rank["torch"][rank].clone())  # its own storage: a row view crashes torch
            if "cuda" in per_rank and self.device.type == "cuda":
                torch.cuda.set_rng_state(per_rank["cuda"][rank].clone(), self.device)
        else:  # another world size (or none): fresh per-rank streams from the saved one
            self._own_rank_stream()

    def on_validation_start(self) -> None:
        self._rng_before_validation = rng_states()

    def on_validation_end(self) -> None:
        saved = getattr(self, "_rng_before_validation", None)
        if saved is not None:
            set_rng_states(saved)
            self._rng_before_validation = None


RNG_KEY = "genbench_rng_states"
RANK_SEED_STRIDE = 1_000_003


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, Python) in types ``torch.load(weights_only=True)`` reads."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only where the same devices exist)."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = states.get("numpy")
    if n:
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if states.get("python") is not None:
        random.setstate(states["python"])


def log_mean_exp_over_classes(log_likelihood_given: Callable[[torch.Tensor], torch.Tensor], n: int,
                              num_classes: int, device: torch.device) -> torch.Tensor:
    """log (1/K) sum_y exp(l(y)) for ``l = log_likelihood_given(labels)`` evaluated at every class ``y``
    (labels ``[n]`` all equal to y): the marginal log p(x) under a uniform class prior. Exact where ``l`` is
    exact (a flow); where ``l`` is a lower bound on log p(x | y) the result is a lower bound on log p(x),
    because log-sum-exp is increasing in every argument."""
    per_class = torch.stack([log_likelihood_given(torch.full((n,), y, dtype=torch.int64, device=device))
                             .to(torch.float64) for y in range(num_classes)])
    return torch.logsumexp(per_class, dim=0) - math.log(num_classes)
