"""LightningModules ("systems") for each family. They all keep the contract of :mod:`genbench.models.base`."""
