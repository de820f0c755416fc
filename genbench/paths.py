"""Where genbench reads its configs and writes its outputs: never the installed package's own directory.

Outputs (``runs/`` and ``benchmarks/``) go under the root given, in order, by an explicit ``--output-dir``,
the ``GENBENCH_HOME`` environment variable, or the working directory; ``make bench`` from the repository
root therefore writes ``benchmarks/results/``, ``benchmarks/leaderboard.*`` and ``runs/`` in the repository.
``smoke`` runs (a plumbing check) write their records and leaderboard under ``benchmarks/smoke/`` instead,
so they never mix with the ``quick``/``paper`` records of the project's leaderboard.

Configs are read from an explicit ``--configs-dir``, else ``GENBENCH_CONFIGS``, else the config tree that
ships with the package (``genbench/configs`` in a wheel, ``configs/`` of a source checkout), so an installed
``genbench`` works from any directory.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "GENBENCH_HOME"
CONFIGS_ENV = "GENBENCH_CONFIGS"
PACKAGE_DIR = Path(__file__).resolve().parent
SMOKE_PROFILE = "smoke"  # the plumbing-check profile: its records never reach the project's leaderboard


def output_root(explicit: Path | str | None = None) -> Path:
    """The absolute directory under which ``runs/`` and ``benchmarks/`` live."""
    root = explicit if explicit is not None else os.environ.get(HOME_ENV) or Path.cwd()
    return Path(root).expanduser().resolve()


def results_dir(root: Path, profile: str | None = None) -> Path:
    """Result records of ``profile`` under ``root``: ``benchmarks/results``, or ``benchmarks/smoke/results``
    for smoke runs (their leaderboard is then ``benchmarks/smoke/leaderboard.*``, the results' parent)."""
    if profile == SMOKE_PROFILE:
        return root / "benchmarks" / "smoke" / "results"
    return root / "benchmarks" / "results"


def runs_dir(root: Path) -> Path:
    return root / "runs"


def packaged_configs_dir() -> Path:
    """The config tree shipped with genbench: package data in an installed wheel, ``configs/`` in a checkout."""
    for candidate in (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs"):
        if (candidate / "profile").is_dir():
            return candidate
    raise FileNotFoundError(
        f"genbench's config tree is missing (looked in {PACKAGE_DIR / 'configs'} and {PACKAGE_DIR.parent / 'configs'}); "
        f"reinstall genbench, or pass --configs-dir DIR / set {CONFIGS_ENV}=DIR")


def configs_dir(explicit: Path | str | None = None) -> Path:
    """The config tree: ``explicit``, else ``$GENBENCH_CONFIGS``, else :func:`packaged_configs_dir`."""
    chosen = explicit if explicit is not None else os.environ.get(CONFIGS_ENV)
    return Path(chosen).expanduser().resolve() if chosen else packaged_configs_dir()


def reference_file() -> Path:
    """Published numbers shown on the leaderboard (``reference.yaml`` of the config tree)."""
    return packaged_configs_dir() / "reference.yaml"


def relative_to_root(path: Path | str | None, root: Path) -> str | None:
    """``path`` relative to the output root when it lies under it (records stay valid when the root moves),
    else the absolute path."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return p.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(p)
