"""``python -m genbench <command>``: a dispatcher from a command name to the function that runs it.

Each command is one entry of :data:`COMMANDS`: its help line and ``"module:function"``, a function taking
the arguments after the command name and returning the exit status. Modules are imported only when their
command runs, so ``--help`` and a typo answer without loading Lightning.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    target: str  # "module:function"; function(argv: list[str]) -> int
    help: str


COMMANDS: dict[str, Command] = {
    "fit": Command("genbench.lightning_cli:fit", "train a model (LightningCLI; compose configs with repeated --config)"),
    "validate": Command("genbench.lightning_cli:validate", "run the validation loop of a model"),
    "test": Command("genbench.lightning_cli:test", "run the test loop of a model (bits/dim on the test split)"),
    "bench": Command("genbench.bench.run:main",
                     "fit + evaluate one model on one dataset/profile, write the result record, refresh the leaderboard"),
    "score": Command("genbench.score:main",
                     "score pre-generated samples (a folder of PNG/JPEG or an .npz) against a dataset: FID/KID/PR"),
    "sweep": Command("genbench.sweep:main",
                     "run a sweep file (models x seeds x datasets) one after another, or as a SLURM job array"),
    "leaderboard": Command("genbench.bench.leaderboard:main",
                           "rebuild benchmarks/leaderboard.md and leaderboard.html from the result records"),
    "restore": Command("genbench.restoration.cli:main",
                       "zero-shot restoration (inpainting, super-resolution, denoising, deblurring) with a DDPM checkpoint"),
}

USAGE = """usage: genbench <command> [options]   (or python -m genbench <command> [options])

commands:
{commands}

`python -m genbench <command> --help` shows the options of a command.
"""


def usage() -> str:
    return USAGE.format(commands="\n".join(f"  {name:<12} {cmd.help}" for name, cmd in COMMANDS.items()))


def shutdown_distributed() -> None:
    """Destroy the process group a DDP run created, so every rank exits cleanly (gloo's threads otherwise
    may abort the interpreter at exit). A command that never loaded torch.distributed has none."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"genbench: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    module, function = COMMANDS[name].target.split(":")
    try:
        code = getattr(importlib.import_module(module), function)(rest)
    finally:
        shutdown_distributed()
    raise SystemExit(code or 0)
