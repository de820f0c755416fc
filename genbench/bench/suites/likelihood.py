"""Likelihood suites: bits/dim of test images (``bpd``, ``bpd_<variant>``) and nats per example of continuous
points (``nll_nats`` beside the density's true entropy), for models that declare a likelihood.

The first ``likelihood_subset`` test examples are scored in chunks aligned to global multiples of the batch
size and dealt round-robin to the ranks; each chunk runs with the global RNG seeded by (seed, chunk index).
A stochastic estimator (IWAE samples, dequantization noise, sampled timesteps) thus sees the same noise for
the same images whatever the number of ranks, and the same checkpoint gives the same bits/dim on 1 or N
devices. Values are gathered exactly once (no padded duplicates).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from genbench.bench.suites.base import Suite
from genbench.bench.suites.context import EvalContext, unavailable
from genbench.capabilities import IMAGES, LIKELIHOOD, POINTS
from genbench.data.toy2d import make_toy2d
from genbench.metrics import table as T
from genbench.metrics.likelihood import bpd, mean_and_stderr
from genbench.models.base import LikelihoodUnavailable


def _score(fn: Any, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    ll = fn(x.to(device), y.to(device))
    if not isinstance(ll, torch.Tensor) or ll.shape != (len(x),):
        raise ValueError(f"log-likelihood must be a tensor of shape [{len(x)}], got {getattr(ll, 'shape', ll)}")
    return ll.detach().to(torch.float64).cpu()


class _LikelihoodSuite(Suite):
    capabilities = (LIKELIHOOD,)
    on_missing_capability = "unavailable"
    per_rank = True
    main_key: ClassVar[str] = ""

    def unavailable(self, ctx: EvalContext) -> dict[str, Any]:
        return {self.main_key: unavailable(f"{type(ctx.model).__name__} defines no density")}

    def entry(self, ctx: EvalContext, values: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def variant_key(self, name: str) -> str:
        raise NotImplementedError

    def functions(self, model: Any) -> dict[str | None, Any]:
        """What is scored, by variant name (None: the main estimate): callables of (x, labels)."""
        fns: dict[str | None, Any] = {None: lambda x, y: model.log_likelihood(x)}
        for name, fn in dict(model.likelihood_variants()).items():
            fns[name] = lambda x, y, fn=fn: fn(x)
        return fns

    def run(self, ctx: EvalContext) -> dict[str, Any]:
        with torch.no_grad():
            return self._run(ctx)

    def _run(self, ctx: EvalContext) -> dict[str, Any]:
        model, cfg, ranks = ctx.model, ctx.cfg, ctx.ranks
        split = cfg.likelihood_split
        split_x, split_y = ctx.datamodule.split(split)
        m = len(split_x) if cfg.likelihood_subset is None else min(cfg.likelihood_subset, len(split_x))
        bsz = cfg.likelihood_batch_size
        chunks = [(i, s) for i, s in enumerate(range(0, m, bsz)) if i % ranks.world == ranks.rank]
        fns = self.functions(model)
        nll: dict[Any, list[torch.Tensor]] = {k: [] for k in fns}
        reason = ""
        local_n = sum(min(s + bsz, m) - s for _, s in chunks)
        fork_devices = [model.device] if model.device.type == "cuda" else []
        with tqdm(total=local_n, desc="likelihood", unit="img", disable=not (ctx.progress and ranks.is_zero)) as bar:
            try:
                for i, s in chunks:
                    x, y = split_x[s: min(s + bsz, m)], split_y[s: min(s + bsz, m)]
                    with torch.random.fork_rng(devices=fork_devices):
                        torch.manual_seed(cfg.seed * 1_000_003 + i)
                        for key, fn in fns.items():
                            nll[key].append(-_score(fn, x, y, model.device))
                    bar.update(len(x))
            except LikelihoodUnavailable as e:  # declared, yet unavailable at run time (e.g. on one rank)
                reason = str(e) or f"{type(model).__name__} defines no likelihood"
        # every rank learns whether any rank found the likelihood unavailable
        if ranks.max_scalar(1.0 if reason else 0.0) > 0:
            reason = reason or "log_likelihood raised LikelihoodUnavailable on another rank"
            return {self.main_key: unavailable(reason)}

        info = model.likelihood_info()
        subset = f"{split}[0:{m}]" + (" (whole split)" if m == len(split_x) else "")
        out: dict[str, Any] = {}
        for key, parts in nll.items():
            local = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
            values = ranks.gather_rows(local)
            if len(values) != m:
                raise RuntimeError(f"gathered {len(values)} log-likelihoods for {m} {split} images")
            entry = {**self.entry(ctx, values), "n": m, "subset": subset}
            entry["n_nonfinite"] = int((~torch.isfinite(values)).sum())
            if key is None:
                entry.update(info)
                ctx.log_likelihoods[self.main_key] = -values
            else:
                entry.update({"kind": info.get("kind", model.likelihood_kind), "variant": key,
                              **model.likelihood_variant_info(key)})
            out[self.main_key if key is None else self.variant_key(key)] = entry
        return out


class BitsPerDimSuite(_LikelihoodSuite):
    """``bpd`` (and ``bpd_<name>`` per ``model.likelihood_variants()``), beside the nats they come from."""

    name = "likelihood_bpd"
    data_kinds = (IMAGES,)
    main_key = T.BPD

    def variant_key(self, name: str) -> str:
        return T.bpd_variant(name)

    def entry(self, ctx: EvalContext, values: torch.Tensor) -> dict[str, Any]:
        mean, se = mean_and_stderr(bpd(values, ctx.model.num_dims))
        nats, nats_se = mean_and_stderr(values)
        # the nats the bits/dim come from, so that bpd = nll_nats / (num_dims ln 2) can be checked
        return {"value": mean, "stderr": se, "num_dims": ctx.model.num_dims,
                "nll_nats": nats, "nll_nats_stderr": nats_se}


class NatsSuite(_LikelihoodSuite):
    """``nll_nats`` of continuous points, beside the true entropy of the density they are drawn from."""

    name = "likelihood_nats"
    data_kinds = (POINTS,)
    main_key = T.NLL_NATS

    def variant_key(self, name: str) -> str:
        return T.variant(T.NLL_NATS_VARIANT_PREFIX, name)

    def entry(self, ctx: EvalContext, values: torch.Tensor) -> dict[str, Any]:
        mean, se = mean_and_stderr(values)
        return {"value": mean, "stderr": se, "unit": T.METRICS[T.NLL_NATS].unit}

    def _run(self, ctx: EvalContext) -> dict[str, Any]:
        out = super()._run(ctx)
        if out[self.main_key].get("available", True):
            entropy, entropy_se = make_toy2d(ctx.datamodule.dataset).entropy()
            out[self.main_key].update({"true_entropy_nats": entropy, "true_entropy_stderr": entropy_se})
        return out
