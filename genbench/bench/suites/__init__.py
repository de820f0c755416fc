"""Evaluation suites: each one module, chosen by the data kind and the model's declared capabilities.

:func:`genbench.bench.evaluate.evaluate` runs :func:`select`'s suites in :data:`SUITES` order over one
:class:`~genbench.bench.suites.context.EvalContext`. Adding a suite is one module defining a
:class:`~genbench.bench.suites.base.Suite` subclass and one line in :data:`SUITES`; its metrics are declared
in :mod:`genbench.metrics.table`.
"""

from __future__ import annotations

from typing import Any

from genbench.bench.config import EvalConfig
from genbench.bench.suites.base import Suite, SuiteConfigError
from genbench.bench.suites.conditional import (
    ConditionalLikelihoodSuite,
    ConditionalSamplesSuite,
    GuidanceSweepSuite,
)
from genbench.bench.suites.domain import DomainSuite
from genbench.bench.suites.extraction import ExtractionSuite
from genbench.bench.suites.inception_quality import InceptionQualitySuite
from genbench.bench.suites.likelihood import BitsPerDimSuite, NatsSuite
from genbench.bench.suites.memorization import MemorizationSuite
from genbench.bench.suites.sample_variants import SampleVariantsSuite
from genbench.bench.suites.sampler_sweep import SamplerSweepSuite
from genbench.bench.suites.sampling import SamplingSuite
from genbench.bench.suites.toy2d_modes import Toy2DModesSuite
from genbench.capabilities import data_kind

# Run order: likelihoods (every rank; the conditional one pairs with bpd), then the shared samples (every
# rank), then the suites that read them (rank 0), then the sweeps, the sample variants and the class-conditional
# samples (every rank: they draw their own samples).
SUITES: tuple[Suite, ...] = (
    BitsPerDimSuite(),
    ConditionalLikelihoodSuite(),
    NatsSuite(),
    SamplingSuite(),
    DomainSuite(),
    InceptionQualitySuite(),
    Toy2DModesSuite(),
    MemorizationSuite(),
    ExtractionSuite(),
    SamplerSweepSuite(),
    SampleVariantsSuite(),
    ConditionalSamplesSuite(),
    GuidanceSweepSuite(),
)


def select(model: Any, cfg: EvalConfig, suites: tuple[Suite, ...] = SUITES) -> list[tuple[Suite, bool]]:
    """``(suite, runnable)`` for every suite that applies to the model's data kind and is requested by ``cfg``;
    ``runnable`` is False where the model lacks a capability and the suite records its unavailable entries.
    Raises :class:`SuiteConfigError` (before any work) for a requested suite the model cannot run."""
    kind = data_kind(model.is_continuous)
    caps = set(model.capabilities)
    chosen = []
    for suite in suites:
        if kind not in suite.data_kinds or not suite.applies_to(model) or not suite.requested(cfg):
            continue
        missing = set(suite.capabilities) - caps
        if not missing:
            chosen.append((suite, True))
        elif suite.on_missing_capability == "unavailable":
            chosen.append((suite, False))
        elif suite.on_missing_capability == "error":
            raise SuiteConfigError(suite.missing_capability_error(model, missing))
    return chosen


__all__ = ["SUITES", "Suite", "SuiteConfigError", "select"]
