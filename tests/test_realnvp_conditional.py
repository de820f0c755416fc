"""Class-conditional Real NVP: the exact marginal over classes, the change of variables with labels, the
information bound log p(x|y) - log p(x) <= log K, label checks, labelled sampling and a short MNIST fit whose
samples the shipped domain classifier recognises as the requested classes."""

from __future__ import annotations

import math

import pytest
import torch

from genbench.models.realnvp import RealNVP
from genbench.nets.coupling import AffineCoupling, RealNVPFlow

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)

IMAGE = {"data_shape": (1, 8, 8), "num_levels": 17, "num_classes": 10, "num_scales": 2, "mid_channels": 4}
POINTS = {"data_shape": (2,), "num_levels": 0, "num_classes": 4, "mlp_couplings": 2, "mlp_hidden": 8}
MODES = {"base": {"class_conditional": True},
         "couplings": {"class_conditional": True, "conditional_couplings": True}}


def _randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Move every parameter away from its identity initialisation so that each layer, and each class, differs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _data(kwargs: dict, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kwargs["num_levels"] == 0:
        return torch.randn(n, *kwargs["data_shape"], generator=g)
    return torch.randint(0, kwargs["num_levels"], (n, *kwargs["data_shape"]), dtype=torch.uint8, generator=g)


def _trained_like(seed: int = 0, std: float = 0.1, **kwargs) -> RealNVP:
    """A model after ActNorm initialisation on data, with every parameter (the base included) perturbed."""
    torch.manual_seed(seed)
    model = RealNVP(**kwargs)
    model.train()
    model._loss(_data(kwargs, 32, seed=7))  # ActNorm data-dependent initialisation
    _randomize(model, seed, std)
    return model.eval()


def _per_class(model: RealNVP, x: torch.Tensor) -> torch.Tensor:
    """``[K, N]``: log p(x | y) for every class y, each call with the same seeded dequantization."""
    return torch.stack([model.log_likelihood(x, torch.full((len(x),), y)) for y in range(model.num_classes)])


@pytest.mark.parametrize("data", ["image", "points"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_marginal_is_the_log_mean_exp_of_the_conditionals(mode, data):
    """Without labels the model scores log (1/K) sum_y p(x | y) exactly: one flow pass for a conditional base,
    one per class with conditional couplings; both against K separate conditional calls."""
    kwargs = {**(IMAGE if data == "image" else POINTS), **MODES[mode]}
    model = _trained_like(**kwargs)
    x = _data(kwargs, 6)
    per_class = _per_class(model, x)
    brute_force = torch.logsumexp(per_class, 0) - math.log(model.num_classes)
    marginal = model.log_likelihood(x)
    assert marginal.dtype == torch.float64 and marginal.shape == (6,)
    assert per_class.std(0).min() > 1e-3  # the classes really score differently
    assert torch.allclose(marginal, brute_force, rtol=0, atol=1e-6), (marginal - brute_force).abs().max()
    info = model.likelihood_info()
    assert info["kind"] == model.likelihood_kind and "exact marginal" in info["marginal"]
    assert ("per class" in info["marginal"]) == (mode == "couplings")


def test_iw_dequant_without_labels_bounds_the_marginal():
    model = _trained_like(**IMAGE, **MODES["base"], dequant_draws=4, iw_dequant_draws=4)
    x = _data(IMAGE, 5)
    iw = model.likelihood_variants()["iw_dequant"](x)
    assert (iw >= model.log_likelihood(x) - 1e-9).all()  # never looser than the Jensen mean of the same draws
    labels = torch.arange(5)
    assert (model.iw_dequant_log_likelihood(x, labels=labels) >= model.log_likelihood(x, labels) - 1e-9).all()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_at_initialisation_the_conditional_model_is_the_unconditional_one(mode):
    """mu_y = 0 and log sigma_y = 0 give the standard normal base and the couplings start as the identity, so
    conditional, marginal and unconditional log-likelihoods coincide; a conditional base adds parameters
    after the flow's, so with the same seed its flow is the unconditional flow, weight for weight."""
    x = _data(IMAGE, 6)
    torch.manual_seed(0)
    plain = RealNVP(**IMAGE)
    torch.manual_seed(0)
    cond = RealNVP(**IMAGE, **MODES[mode])
    for model in (plain, cond):
        model.train()
        torch.manual_seed(7)  # the same dequantization noise, so the same ActNorm initialisation
        model._loss(_data(IMAGE, 32, seed=7))
    reference = plain.log_likelihood(x)
    for y in (0, 9):
        assert torch.allclose(cond.log_likelihood(x, torch.full((6,), y)), reference, rtol=0, atol=1e-4)
    assert torch.allclose(cond.log_likelihood(x), reference, rtol=0, atol=1e-4)
    if mode == "base":
        plain_state = plain.state_dict()
        cond_state = cond.state_dict()
        assert set(cond_state) - set(plain_state) == {"base_mean", "base_log_std"}
        assert all(torch.equal(cond_state[k], v) for k, v in plain_state.items())
        _randomize(plain.flow)  # a trained flow: still the same density under the zero-initialised base
        cond.flow.load_state_dict(plain.flow.state_dict())
        assert torch.allclose(cond.log_likelihood(x, torch.zeros(6, dtype=torch.int64)), plain.log_likelihood(x),
                              rtol=0, atol=1e-4)


def test_conditional_density_is_the_change_of_variables_of_a_class_gaussian():
    """log p(x | y) = log N(f(v; y); mu_y, sigma_y^2) + log|det| with an independent Gaussian, f inverts
    with the same label, and the label-dependent log-determinant matches autograd on a tiny flow."""
    model = _trained_like(**IMAGE, **MODES["couplings"])
    x, labels = _data(IMAGE, 4), torch.tensor([0, 3, 3, 9])
    with torch.no_grad():
        generator = torch.Generator().manual_seed(model.likelihood_seed)
        v, logdet_pre = model._preprocess(x, generator)
        context = torch.nn.functional.one_hot(labels, 10).float()
        z, logdet = model.flow(v, context)
        base = torch.distributions.Normal(model.base_mean[labels].double(), model.base_log_std[labels].exp().double())
        expected = base.log_prob(z.double()).sum(1) + logdet.double() + logdet_pre - 64 * math.log(17)
        assert torch.allclose(model.log_likelihood(x, labels), expected, rtol=0, atol=1e-6)
        assert (model.flow.inverse(z, context) - v).abs().max() < 1e-4
        other, _ = model.flow(v, torch.nn.functional.one_hot(9 - labels, 10).float())
        assert (other - z).abs().max() > 1e-3  # the couplings depend on the label

    torch.manual_seed(0)
    flow = RealNVPFlow(1, 4, 4, num_scales=2, mid_channels=6, num_blocks=1, context_channels=3).double()
    _randomize(flow, std=0.3)
    x0 = torch.randn(1, 16, dtype=torch.float64)
    context = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda u: flow(u.view(1, 1, 4, 4), context)[0].flatten(), x0[0])
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign != 0 and abs(float(logabsdet)) > 0.5
    assert torch.allclose(flow(x0.view(1, 1, 4, 4), context)[1][0], logabsdet, atol=1e-8)
    with pytest.raises(ValueError, match="context"):
        flow(x0.view(1, 1, 4, 4))  # built for a context: it must be given
    with pytest.raises(ValueError, match="context"):
        AffineCoupling(2, "channel", 0, 4, 1)(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_information_bound_log_k(mode):
    """p(x) = (1/K) sum_y p(x | y) >= p(x | y) / K, so log p(x|y) - log p(x) <= log K for every image and label,
    with equality in the sum: the class posteriors p(y | x) = p(x | y) / (K p(x)) sum to one."""
    model = _trained_like(**IMAGE, **MODES[mode], std=0.3)  # strongly class-dependent
    x = _data(IMAGE, 8)
    gain = _per_class(model, x) - model.log_likelihood(x)
    assert (gain <= math.log(10) + 1e-9).all(), gain.max()
    assert gain.max() > 1.0  # a real test: some label carries information about some image
    assert torch.allclose(torch.logsumexp(gain, 0), torch.full((8,), math.log(10), dtype=torch.float64), atol=1e-6)


def test_label_checks_and_init_errors():
    model = _trained_like(**IMAGE, **MODES["base"])
    x = _data(IMAGE, 3)
    with pytest.raises(ValueError, match="shape"):
        model.log_likelihood(x, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="classes 0..9"):
        model.log_likelihood(x, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match="classes 0..9"):
        model.sample(2, labels=torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer"):
        model.sample(2, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        model.sample(3, labels=torch.zeros(3, 1, dtype=torch.int64))
    plain = RealNVP(**IMAGE)
    with pytest.raises(ValueError, match="unconditional"):
        plain.log_likelihood(x, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="unconditional"):
        plain.sample(3, labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="conditional_couplings=True needs class_conditional"):
        RealNVP(**IMAGE, conditional_couplings=True)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        RealNVP(**{**IMAGE, "num_classes": 1}, class_conditional=True)
    assert "class_conditional" in model.capabilities and "class_conditional" not in plain.capabilities
    assert model.describe()["class_conditional"] and model.num_parameters() == plain.num_parameters() + 2 * 10 * 64


@pytest.mark.parametrize("mode", sorted(MODES))
def test_samples_follow_the_requested_labels(mode):
    model = _trained_like(**IMAGE, **MODES[mode], std=0.3)
    zeros, nines = torch.zeros(6, dtype=torch.int64), torch.full((6,), 9)
    s0 = model.sample(6, torch.Generator().manual_seed(2), zeros)
    assert s0.dtype == torch.uint8 and s0.shape == (6, 1, 8, 8) and int(s0.max()) < 17
    assert torch.equal(s0, model.sample(6, torch.Generator().manual_seed(2), zeros))
    assert not torch.equal(s0, model.sample(6, torch.Generator().manual_seed(2), nines))  # same noise, other class
    unlabelled = model.sample(6, torch.Generator().manual_seed(2))  # uniform labels drawn on the generator
    assert torch.equal(unlabelled, model.sample(6, torch.Generator().manual_seed(2)))
    assert model.sample(0, labels=torch.zeros(0, dtype=torch.int64)).shape == (0, 1, 8, 8)
    assert model.sampler_info()["labels"] == "uniform"
    points = _trained_like(**POINTS, **MODES[mode], std=0.3)
    p = points.sample(5, torch.Generator().manual_seed(0), torch.tensor([0, 1, 2, 3, 0]))
    assert p.dtype == torch.float32 and p.shape == (5, 2)


@pytest.mark.filterwarnings("ignore:.*self.log.*")  # training_step outside a Trainer
def test_short_mnist_fit_draws_the_requested_classes():
    """150 steps of a nearly linear flow (one scale, 2-channel s/t nets, lr 0.3) on 2000 MNIST images: the
    class means mu_y are what a conditional base learns first, so at temperature 1 the shipped domain
    classifier already labels its samples as the requested classes well above chance (0.1; measured about
    0.6-0.75). A few seconds to ~20 s of one busy core."""
    from genbench.data import GenDataModule
    from genbench.metrics.domain import DomainExtractor

    dm = GenDataModule("mnist")
    dm.setup()
    x, y = dm.split("train")
    x, y = x[:2000], y[:2000]
    torch.manual_seed(0)
    model = RealNVP(data_shape=(1, 28, 28), num_levels=256, num_classes=10, num_scales=1, mid_channels=2,
                    num_blocks=0, alpha=0.05, class_conditional=True, lr=0.3, warmup_steps=10)
    optimizer = model.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(150):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = model.training_step((x[idx], y[idx]), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    labels = torch.arange(10).repeat(10)
    samples = model.sample(100, torch.Generator().manual_seed(1), labels)
    _, probs = DomainExtractor(dm)(samples)
    accuracy = float((probs.argmax(1) == labels).float().mean())
    assert accuracy > 0.2, accuracy
