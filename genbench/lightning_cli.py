"""``fit``/``validate``/``test``: LightningCLI over every registered model and the shared datamodule.

YAML files under ``configs/`` compose with repeated ``--config``, and the resolved config is saved beside
every run. The datamodule's shape, number of grey levels and classes are linked into the model, so model
configs never repeat them.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from genbench.bench.budget import BudgetConfig, TrainingBudget
from genbench.bench.config import EvalConfig
from genbench.data import GenDataModule
from genbench.models import registry
from genbench.models.base import GenerativeModel


class GenBenchCLI(LightningCLI):
    """LightningCLI with the datamodule's metadata linked into the model's ``__init__``.

    ``trainer_objects`` (e.g. loggers, plugins) go to the Trainer as they are, outside the parser: the
    resolved config then holds only what a YAML file can say, and jsonargparse never tries to serialise them.
    """

    def __init__(self, *args, trainer_objects: dict | None = None, **kwargs) -> None:
        self.trainer_objects = dict(trainer_objects or {})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in ("data_shape", "num_levels", "num_classes"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")
        # The evaluation protocol of `bench` lives in the same YAML files; fit/validate/test ignore it.
        parser.add_class_arguments(EvalConfig, "evaluation", instantiate=False)
        # The training budget (images seen) applies to `fit` and `bench` alike.
        parser.add_class_arguments(BudgetConfig, "budget", instantiate=False)

    def instantiate_trainer(self, **kwargs):
        budget = BudgetConfig(**dict(self._get(self.config_init, "budget", default={}) or {}))
        trainer = super().instantiate_trainer(**{**self.trainer_objects, **kwargs})
        trainer.callbacks.insert(0, TrainingBudget(budget.train_images))  # first: later callbacks see its count
        return trainer


def make_cli(args: list[str] | None = None, run: bool = True, **kwargs) -> GenBenchCLI:
    """Build the LightningCLI over every registered model (any subclass of GenerativeModel)."""
    registry.import_all()  # so every model class is known to jsonargparse by its short name
    # Given ``args`` (the bench), the process's own command line is not the CLI's: hide it, or LightningCLI
    # warns of a mix-up between the two.
    argv = sys.argv
    if args is not None:
        sys.argv = sys.argv[:1]
    try:
        return GenBenchCLI(
            GenerativeModel,
            GenDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )
    finally:
        sys.argv = argv


def _run_command(command: str, argv: list[str]) -> int:
    args = [command, *argv]
    # From the command line LightningCLI reads sys.argv itself (given both, it warns of a mix-up).
    make_cli(None if sys.argv[1:] == args else args)
    return 0


def fit(argv: list[str]) -> int:
    return _run_command("fit", argv)


def validate(argv: list[str]) -> int:
    return _run_command("validate", argv)


def test(argv: list[str]) -> int:
    return _run_command("test", argv)
