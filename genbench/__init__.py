"""genbench: one datamodule, one evaluation harness, four families of generative models."""

__version__ = "0.1.0"
