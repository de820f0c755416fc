"""Where genbench reads its configs and writes its outputs: never the installed package's own directory.

The root is, in order, an explicit ``--output-dir``, the ``GENBENCH_HOME`` environment variable, or the
working directory; ``make bench`` from the repository root therefore writes ``benchmarks/results/``,
``benchmarks/leaderboard.*`` and ``runs/`` in the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "GENBENCH_HOME"


def output_root(explicit: Path | str | None = None) -> Path:
    """The absolute directory under which ``runs/`` and ``benchmarks/`` live."""
    root = explicit if explicit is not None else os.environ.get(HOME_ENV) or Path.cwd()
    return Path(root).expanduser().resolve()


def results_dir(root: Path) -> Path:
    return root / "benchmarks" / "results"


def runs_dir(root: Path) -> Path:
    return root / "runs"


def configs_dir() -> Path:
    """The config tree: ``configs/`` of the working directory (or of ``GENBENCH_HOME`` when set)."""
    return output_root() / "configs"
