"""The suite contract: what an evaluation suite declares and does."""

from __future__ import annotations

from typing import Any, ClassVar

from genbench.bench.config import EvalConfig
from genbench.capabilities import DATA_KINDS


class SuiteConfigError(ValueError):
    """The protocol asks a suite of a model that does not declare what the suite needs."""


class Suite:
    """One group of metrics. Subclasses set the class attributes and implement :meth:`run`.

    ``data_kinds``/``capabilities``: the data and the declared model capabilities the suite needs.
    ``on_missing_capability``: what happens when the data fit but the model lacks a capability the suite
    needs: ``"skip"`` (the suite does not apply), ``"unavailable"`` (:meth:`unavailable` entries are
    recorded), or ``"error"`` (:meth:`requested` suites are rejected before any work, with the fix).
    ``per_rank``: :meth:`run` runs on every rank (it gathers across them); otherwise on rank 0 only, after
    the samples are drawn.
    """

    name: ClassVar[str] = ""
    data_kinds: ClassVar[tuple[str, ...]] = DATA_KINDS
    capabilities: ClassVar[tuple[str, ...]] = ()
    on_missing_capability: ClassVar[str] = "skip"
    per_rank: ClassVar[bool] = False

    def applies_to(self, model: Any) -> bool:
        """Whether the suite concerns this kind of model at all (e.g. only class-conditional ones); a suite
        that does not apply is skipped silently, whatever its ``on_missing_capability``."""
        return True

    def requested(self, cfg: EvalConfig) -> bool:
        """Whether the protocol asks for this suite's metrics."""
        return True

    def samples_needed(self, cfg: EvalConfig) -> int:
        """How many of the shared samples the suite reads (the sampling suite draws the largest count)."""
        return 0

    def unavailable(self, ctx: Any) -> dict[str, Any]:
        """The record entries of a model that lacks a needed capability (``on_missing_capability="unavailable"``)."""
        return {}

    def missing_capability_error(self, model: Any, missing: set[str]) -> str:
        return (f"evaluation suite {self.name!r} needs the model capabilities {sorted(missing)}, which "
                f"{type(model).__name__} does not declare; drop the option that requests it from the evaluation "
                "config")

    def run(self, ctx: Any) -> dict[str, Any]:
        raise NotImplementedError
