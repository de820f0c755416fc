"""Model names used by configs, the bench runner and the tests."""

from __future__ import annotations

import importlib

# name -> "module:Class". Adding a model = one entry here (+ nets/, models/, configs/model/<name>.yaml).
MODELS: dict[str, str] = {}


def register(name: str, target: str) -> None:
    MODELS[name] = target


register("gan", "genbench.models.gan:GAN")
register("vae", "genbench.models.vae:VAE")
register("ddpm", "genbench.models.ddpm:DDPM")
register("realnvp", "genbench.models.realnvp:RealNVP")


def model_names() -> list[str]:
    return sorted(MODELS)


def import_all() -> None:
    for target in MODELS.values():
        importlib.import_module(target.split(":")[0])


def model_class(name: str):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)
