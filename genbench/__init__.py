"""genbench: one datamodule, one evaluation harness, four families of generative models.

``genbench.evaluate(model_or_sample_fn, data="mnist", num_samples=..., metrics=[...])`` scores any generator
(:mod:`genbench.api`); it is imported on first use, so ``import genbench`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["evaluate", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from genbench.api import evaluate

        return evaluate
    raise AttributeError(f"module 'genbench' has no attribute {name!r}")
