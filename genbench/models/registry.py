"""Model names used by configs, the bench runner and the tests, and models outside the registry by class path.

The registry names the project's own models; any other :class:`~genbench.models.base.GenerativeModel`
subclass is used by its class path (``pkg.module.Class`` or ``pkg.module:Class``), as LightningCLI allows.
"""

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
register("ldm", "genbench.models.ldm:LDM")


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


def class_from_path(path: str):
    """The :class:`~genbench.models.base.GenerativeModel` subclass named by ``pkg.module.Class`` (or
    ``pkg.module:Class``); a clear error when it cannot be imported or is not a GenerativeModel."""
    from genbench.models.base import GenerativeModel

    module, sep, name = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not name:
        raise ValueError(f"{path!r} is not a class path; write pkg.module.Class")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"cannot import module {module!r} of {path!r} ({err}); install the package that holds it "
                          "or put it on PYTHONPATH") from None
    cls = getattr(mod, name, None)
    if cls is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    if not isinstance(cls, type) or not issubclass(cls, GenerativeModel):
        raise TypeError(f"{path} is not a subclass of genbench.models.base.GenerativeModel; subclass it and "
                        "implement sample() and log_likelihood()")
    return cls
