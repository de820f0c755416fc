"""``python -m genbench``: Lightning's ``fit``/``validate``/``test`` plus ``bench`` and ``leaderboard``.

``fit``/``validate``/``test`` are LightningCLI (jsonargparse): YAML files under ``configs/`` compose with
repeated ``--config``, and the resolved config is saved beside every run. The datamodule's shape, number
of grey levels and classes are linked into the model, so model configs never repeat them.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

LIGHTNING_COMMANDS = ("fit", "validate", "test")
EXTRA_COMMANDS = {
    "bench": "fit + evaluate one model on one dataset/profile, write the result record, refresh the leaderboard",
    "leaderboard": "rebuild benchmarks/leaderboard.md and leaderboard.html from the result records",
    "restore": "zero-shot restoration (inpainting, super-resolution, denoising, deblurring) with a DDPM checkpoint",
}

USAGE = """usage: python -m genbench <command> [options]

commands:
  fit          train a model (LightningCLI; compose configs with repeated --config)
  validate     run the validation loop of a model
  test         run the test loop of a model (bits/dim on the test split)
{extra}

`python -m genbench <command> --help` shows the options of a command.
"""


class GenBenchCLI(LightningCLI):
    """LightningCLI with the datamodule's metadata linked into the model's ``__init__``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from genbench.bench.budget import BudgetConfig
        from genbench.bench.config import EvalConfig

        for attr in ("data_shape", "num_levels", "num_classes"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")
        # The evaluation protocol of `bench` lives in the same YAML files; fit/validate/test ignore it.
        parser.add_class_arguments(EvalConfig, "evaluation", instantiate=False)
        # The training budget (images seen) applies to `fit` and `bench` alike.
        parser.add_class_arguments(BudgetConfig, "budget", instantiate=False)

    def instantiate_trainer(self, **kwargs):
        from genbench.bench.budget import BudgetConfig, TrainingBudget

        budget = BudgetConfig(**dict(self._get(self.config_init, "budget", default={}) or {}))
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.insert(0, TrainingBudget(budget.train_images))  # first: later callbacks see its count
        return trainer


def make_cli(args: list[str] | None = None, run: bool = True, **kwargs) -> GenBenchCLI:
    """Build the LightningCLI over every registered model (any subclass of GenerativeModel)."""
    from genbench.data import GenDataModule
    from genbench.models import registry
    from genbench.models.base import GenerativeModel

    registry.import_all()  # so every model class is known to jsonargparse by its short name
    return GenBenchCLI(
        GenerativeModel,
        GenDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        **kwargs,
    )


def shutdown_distributed() -> None:
    """Destroy the process group a DDP run created, so every rank exits cleanly (gloo's threads otherwise
    may abort the interpreter at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        extra = "\n".join(f"  {k:<12} {v}" for k, v in EXTRA_COMMANDS.items())
        print(USAGE.format(extra=extra))
        raise SystemExit(0 if argv else 2)
    command = argv[0]
    if command == "bench":
        from genbench.bench.run import main as bench_main

        try:
            code = bench_main(argv[1:])
        finally:
            shutdown_distributed()
        raise SystemExit(code)
    if command == "leaderboard":
        from genbench.bench.leaderboard import main as leaderboard_main

        raise SystemExit(leaderboard_main(argv[1:]))
    if command == "restore":
        from genbench.restoration.cli import main as restore_main

        raise SystemExit(restore_main(argv[1:]))
    if command in LIGHTNING_COMMANDS:
        try:
            make_cli(None if from_command_line else argv)
        finally:
            shutdown_distributed()
        return
    valid = ", ".join(LIGHTNING_COMMANDS + tuple(EXTRA_COMMANDS))
    print(f"genbench: unknown command {command!r}; valid commands: {valid}", file=sys.stderr)
    raise SystemExit(2)
