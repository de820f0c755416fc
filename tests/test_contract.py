"""The model contract, checked for every registered model.

Adding a model = one registry entry; this file then checks it with no change. A model outside the registry
is checked by naming its class path(s), comma-separated, in ``GENBENCH_CONTRACT_MODELS``:

    GENBENCH_CONTRACT_MODELS=my_pkg.models.MyModel pytest tests/test_contract.py

(built with its own defaults on the 8x8, 17-level ``digits`` data).
"""

import os
from pathlib import Path

import pytest
import torch
import yaml

from genbench.data import GenDataModule
from genbench.models import registry
from genbench.models.base import LIKELIHOOD_NONE, GenerativeModel, LikelihoodUnavailable

ROOT = Path(__file__).resolve().parents[1]
registry.import_all()
OUTSIDE_MODELS = [p.strip() for p in os.environ.get("GENBENCH_CONTRACT_MODELS", "").split(",") if p.strip()]
MODELS = registry.model_names() + OUTSIDE_MODELS


def smoke_model(name: str, dm: GenDataModule) -> GenerativeModel:
    """The model as configured by configs/model/<name>.yaml + configs/profile/smoke/<name>.yaml (a model
    outside the registry, named by class path: with its own defaults)."""
    if name not in registry.MODELS:
        torch.manual_seed(0)
        return registry.class_from_path(name)(data_shape=dm.data_shape, num_levels=dm.num_levels,
                                              num_classes=dm.num_classes)
    base = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())["model"]
    prof = yaml.safe_load((ROOT / "configs" / "profile" / "smoke" / f"{name}.yaml").read_text()) or {}
    init = dict(base.get("init_args") or {})
    init.update(((prof.get("model") or {}).get("init_args")) or {})
    cls = registry.model_class(name)
    torch.manual_seed(0)
    return cls(data_shape=dm.data_shape, num_levels=dm.num_levels, num_classes=dm.num_classes, **init)


@pytest.fixture(scope="module")
def digits():
    dm = GenDataModule("digits")
    dm.setup()
    return dm


def test_every_family_is_registered():
    assert {"ddpm", "vae", "realnvp", "gan"} <= set(MODELS)
    families = {registry.model_class(m).family for m in registry.model_names()}
    assert {"diffusion", "vae", "flow", "gan"} <= families


@pytest.mark.parametrize("name", MODELS)
def test_sample_contract(name, digits):
    model = smoke_model(name, digits)
    model.train()
    x = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert model.training, "sample() must restore the training mode"
    assert x.dtype == torch.uint8 and x.shape == (5, 1, 8, 8) and x.device.type == "cpu"
    assert int(x.max()) <= 16
    y = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, y), "the same generator seed must give the same samples"
    assert model.sample(0).shape == (0, 1, 8, 8)


@pytest.mark.parametrize("name", MODELS)
def test_log_likelihood_contract(name, digits):
    model = smoke_model(name, digits)
    x = digits.split("test")[0][:6]
    if model.likelihood_kind == LIKELIHOOD_NONE:
        with pytest.raises(LikelihoodUnavailable):
            model.log_likelihood(x)
        return
    ll = model.log_likelihood(x)
    assert ll.dtype == torch.float64 and ll.shape == (6,)
    assert torch.isfinite(ll).all()
    assert (ll < 0).all(), "log P of discrete data is below 0"
    assert model.likelihood_info()["kind"] == model.likelihood_kind
    for variant in model.likelihood_variants().values():
        v = variant(x)
        assert v.dtype == torch.float64 and v.shape == (6,) and torch.isfinite(v).all()


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_is_rejected_clearly(name, digits):
    model = smoke_model(name, digits)
    if model.likelihood_kind == LIKELIHOOD_NONE:
        pytest.skip(f"{name} defines no likelihood (checked in test_log_likelihood_contract)")
    x = digits.split("test")[0][:2]
    with pytest.raises(TypeError, match="uint8"):
        model.log_likelihood(x.float())
    with pytest.raises(ValueError, match="shape"):
        model.log_likelihood(x[:, :, :4])
    with pytest.raises(ValueError, match="outside 0..16"):
        model.log_likelihood(torch.full_like(x, 200))


@pytest.mark.parametrize("name", MODELS)
def test_describe(name, digits):
    model = smoke_model(name, digits)
    d = model.describe()
    assert d["family"] == model.family and d["params"] > 0
    assert d["likelihood"]["kind"] in ("exact", "bound", "none")
    assert isinstance(d["sampler"], dict)


@pytest.mark.parametrize("name", MODELS)
def test_sampling_cost_is_counted_and_declared(name, digits):
    from genbench.bench.budget import sampling_cost

    model = smoke_model(name, digits)
    cost = sampling_cost(model, n=2)
    evaluations = cost["network_evaluations_per_image"]
    assert isinstance(evaluations, int) and evaluations >= 1, "sampler_info() declares network_evaluations"
    assert cost["flops_per_image"] > 0 or name in OUTSIDE_MODELS  # an outside model may sample without a network
    if name == "ddpm":  # one UNet pass per sampler step
        assert evaluations == model.sampler_info()["steps"]
    assert model.training, "counting restores the training mode"


@pytest.mark.parametrize("name", MODELS)
def test_likelihood_is_full_precision_under_autocast(name, digits):
    """Bits/dim do not depend on the training precision: log_likelihood runs in fp32/fp64 under autocast."""
    model = smoke_model(name, digits)
    if model.likelihood_kind == LIKELIHOOD_NONE:
        pytest.skip(f"{name} defines no likelihood (checked in test_log_likelihood_contract)")
    x = digits.split("test")[0][:4]
    torch.manual_seed(7)
    ref = model.log_likelihood(x)
    torch.manual_seed(7)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = model.log_likelihood(x)
    assert low.dtype == torch.float64
    assert torch.allclose(low, ref, rtol=1e-5, atol=1e-5), (low - ref).abs().max()


# ------------------------------------------------------------------------------------------------ class-conditional
COND_MODELS = sorted(p.stem for p in (ROOT / "configs" / "conditional").glob("*.yaml"))


def conditional_smoke_model(name: str, dm: GenDataModule) -> GenerativeModel:
    """The smoke model with ``configs/conditional/<name>.yaml`` applied (what ``COND=1`` composes)."""
    model = smoke_model(name, dm)
    cond = yaml.safe_load((ROOT / "configs" / "conditional" / f"{name}.yaml").read_text())["model"]["init_args"]
    torch.manual_seed(0)
    return type(model)(**{**dict(model.hparams), **cond})


def test_every_family_has_a_conditional_variant():
    assert {"ddpm", "vae", "realnvp", "gan"} <= set(COND_MODELS)


@pytest.mark.parametrize("name", COND_MODELS)
def test_conditional_contract(name, digits):
    from genbench.capabilities import CLASS_CONDITIONAL

    model = conditional_smoke_model(name, digits)
    assert CLASS_CONDITIONAL in model.capabilities and model.describe()["class_conditional"] is True
    assert CLASS_CONDITIONAL not in smoke_model(name, digits).capabilities
    labels = torch.tensor([0, 3, 3, 9, 5])
    model.train()
    x = model.sample(5, generator=torch.Generator().manual_seed(3), labels=labels)
    assert model.training and x.dtype == torch.uint8 and x.shape == (5, 1, 8, 8) and int(x.max()) <= 16
    assert torch.equal(x, model.sample(5, generator=torch.Generator().manual_seed(3), labels=labels))
    assert model.sample(4, generator=torch.Generator().manual_seed(3)).shape == (4, 1, 8, 8)  # uniform labels
    with pytest.raises(ValueError, match="classes 0..9"):
        model.sample(2, labels=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="unconditional"):
        smoke_model(name, digits).sample(2, labels=torch.tensor([0, 1]))
    xt, yt = digits.split("test")
    xt, yt = xt[:6], yt[:6]
    if model.likelihood_kind == LIKELIHOOD_NONE:
        with pytest.raises(LikelihoodUnavailable):
            model.log_likelihood(xt, yt)
        return
    given = model.log_likelihood(xt, yt)
    marginal = model.log_likelihood(xt)
    for ll in (given, marginal):
        assert ll.dtype == torch.float64 and ll.shape == (6,) and torch.isfinite(ll).all() and (ll < 0).all()
    with pytest.raises(ValueError, match="shape"):
        model.log_likelihood(xt, yt[:3])
