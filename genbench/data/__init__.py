"""Data: the shared datamodule, dataset sources and analytic toy densities."""

from genbench.data.datamodule import GenDataModule, dataset_names, dataset_spec

__all__ = ["GenDataModule", "dataset_names", "dataset_spec"]
