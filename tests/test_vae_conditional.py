"""Class-conditional VAE: the per-class prior's KL, the conditional ELBO and IWAE weights against hand-computed
densities, the stratified marginal bound, label checks, and a short MNIST run whose samples a classifier reads
as the requested digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genbench.data import GenDataModule
from genbench.models.vae import VAE

DIGITS = {"data_shape": (1, 8, 8), "num_levels": 17, "num_classes": 10}
LATENT_DIM = 4

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def tiny_cvae(**kwargs) -> VAE:
    args = {"latent_dim": LATENT_DIM, "channels": (8, 16), "num_res_blocks": 1, "num_mixtures": 3,
            "class_conditional": True, **DIGITS, **kwargs}
    return VAE(**args)


def randomise_prior(model: VAE, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.prior_mean.weight.copy_(torch.randn(model.prior_mean.weight.shape, generator=g))
        model.prior_log_std.weight.copy_(0.5 * torch.randn(model.prior_log_std.weight.shape, generator=g))


@pytest.fixture(scope="module")
def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    dm = GenDataModule("digits")
    dm.prepare_data()
    dm.setup()
    return dm.split("train"), dm.split("test")


@pytest.fixture(scope="module")
def trained(digits) -> VAE:
    """A tiny conditional VAE trained for 80 Adam steps on digits (a few seconds)."""
    torch.manual_seed(0)
    model = tiny_cvae()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    (x, y), _ = digits
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        i = torch.randint(0, len(x), (128,), generator=g)
        loss = model.training_step((x[i], y[i]), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_unconditional_layout_is_unchanged_and_the_prior_starts_standard_normal():
    plain, cond = tiny_cvae(class_conditional=False), tiny_cvae()
    assert not plain.class_conditional and cond.class_conditional
    plain_keys = list(plain.state_dict())
    assert list(cond.state_dict()) == [*plain_keys, "prior_mean.weight", "prior_log_std.weight"]
    assert not any(k.startswith("prior") for k in plain_keys)
    assert plain.encoder.features[0].in_channels == 1 and cond.encoder.features[0].in_channels == 1 + 10
    assert plain.decoder.head.in_features == LATENT_DIM and cond.decoder.head.in_features == LATENT_DIM + 10
    assert torch.equal(cond.prior_mean.weight, torch.zeros(10, LATENT_DIM))
    assert torch.equal(cond.prior_log_std.weight, torch.zeros(10, LATENT_DIM))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        tiny_cvae(num_classes=0)


def test_per_class_prior_kl_matches_torch_distributions(digits):
    (x, y), _ = digits
    x, y = x[:32], y[:32]
    model = tiny_cvae()
    randomise_prior(model)
    terms = model.elbo_terms(x, torch.float64, y)
    mean, logvar = (t.double().detach() for t in model.encode(x, y))
    prior = Normal(model.prior_mean.weight[y].double().detach(), model.prior_log_std.weight[y].double().detach().exp())
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), prior)
    torch.testing.assert_close(terms["kl_per_latent"].detach(), expected)


def test_conditional_elbo_and_importance_weights_are_the_hand_computed_densities(digits):
    (x, y), _ = digits
    x, y = x[:16], y[:16]
    model = tiny_cvae().eval()
    randomise_prior(model, seed=1)
    one_hot = torch.nn.functional.one_hot(y, 10).float()
    with torch.no_grad():
        image = torch.cat([x.float() / 8.0 - 1.0, one_hot[:, :, None, None].expand(-1, -1, 8, 8)], dim=1)
        mean, logvar = model.encoder(image)
        q = Normal(mean.double(), (0.5 * logvar.double()).exp())
        prior = Normal(model.prior_mean.weight[y].double(), model.prior_log_std.weight[y].double().exp())

        def log_px(z: torch.Tensor) -> torch.Tensor:
            out = model.decoder(torch.cat([z.float(), one_hot], dim=1))
            return model.pixel_decoder.log_prob(x, out, torch.float64).flatten(1).sum(1)

        torch.manual_seed(5)
        eps = torch.randn_like(mean)
        expected_elbo = log_px(mean + (0.5 * logvar).exp() * eps) - kl_divergence(q, prior).sum(1)
        torch.manual_seed(5)
        torch.testing.assert_close(model.elbo(x, y), expected_elbo)

        eps = torch.randn((1, 16, LATENT_DIM), generator=torch.Generator().manual_seed(7), dtype=torch.float32)
        z = mean.double() + (0.5 * logvar.double()).exp() * eps.double()[0]
        expected_iw = log_px(z) + prior.log_prob(z).sum(1) - q.log_prob(z).sum(1)
        bound = model.log_likelihood(x, y, iw_samples=1, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(bound, expected_iw)


def test_marginal_equals_the_conditional_bound_when_nothing_depends_on_the_label(digits):
    """With label-blind networks and one prior for every class, the stratified marginal with m samples per
    class is the IWAE bound with K m samples (drawn in the same order)."""
    _, (x, _) = digits
    x, n, per_class = x[:6], 6, 3
    model = tiny_cvae(iw_samples=10 * per_class, iw_batch_size=per_class * n)  # chunks of one class's draws
    with torch.no_grad():
        model.encoder.features[0].weight[:, 1:] = 0.0  # the one-hot channels
        model.decoder.head.weight[:, LATENT_DIM:] = 0.0  # the one-hot inputs beside z
        model.prior_mean.weight.copy_(torch.linspace(-1, 1, LATENT_DIM).expand(10, -1))
        model.prior_log_std.weight.fill_(-0.3)
    marginal = model.log_likelihood(x, generator=torch.Generator().manual_seed(0))
    conditional = model.log_likelihood(x, torch.full((n,), 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(marginal, conditional)
    info = model.likelihood_info()
    assert info["conditioning"] == "marginal over classes, stratified importance sampling"
    assert info["k_per_class"] == per_class and info["k_effective"] == 10 * per_class


def test_marginal_bound_sits_between_the_best_class_and_log_k_below_it(trained, digits):
    _, (x, y) = digits
    x, y = x[:200], y[:200]
    marginal = trained.log_likelihood(x, iw_samples=80, generator=torch.Generator().manual_seed(0))
    per_class = torch.stack([trained.log_likelihood(x, torch.full((200,), c), iw_samples=8,
                                                    generator=torch.Generator().manual_seed(1 + c))
                             for c in range(10)])
    true_class = per_class[y, torch.arange(200)]
    best = per_class.max(0).values
    tol = 0.5  # nats: Monte-Carlo noise of an IWAE-8 estimate, averaged over 200 images
    # log p(x) >= log p(x|y) - log K, and log p(x) <= max_y log p(x|y)
    assert float((marginal - (true_class - math.log(10))).mean()) > -tol
    assert float((marginal - best).mean()) < tol
    assert (marginal > true_class - math.log(10) - 3.0).float().mean() > 0.95
    # labels carry information about x: the true class scores better than an average class
    assert float((true_class - per_class.mean(0)).mean()) > 0.0
    # the elbo variant bounds the same marginal from below
    elbo = trained.likelihood_variants()["elbo"](x)
    assert elbo.dtype == torch.float64 and float((marginal - elbo).mean()) > 0.0
    assert trained.likelihood_variant_info("elbo")["conditioning"].startswith("marginal")


def test_sampling_per_label_differs_and_unlabelled_samples_draw_uniform_classes(trained):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    zeros, ones = torch.zeros(16, dtype=torch.int64), torch.ones(16, dtype=torch.int64)
    a, b = trained.sample(16, g(), zeros), trained.sample(16, g(), ones)
    assert a.dtype == torch.uint8 and a.shape == (16, 1, 8, 8)
    assert torch.equal(a, trained.sample(16, g(), zeros)) and not torch.equal(a, b)
    assert torch.equal(trained.sample(16, g()), trained.sample(16, g()))
    with trained.sample_variant("decoder_modes"):
        modes = trained.sample(16, g(), zeros)
    assert not torch.equal(modes, a)
    info = trained.sampler_info()
    assert info["labels"] == "uniform" and "p(z|y)" in info["sampler"]
    assert trained.describe()["class_conditional"] is True


def test_labels_are_checked_and_an_unconditional_vae_rejects_them(trained, digits):
    _, (x, _) = digits
    x = x[:4]
    for bad, error in ((torch.zeros(5, dtype=torch.int64), ValueError), (torch.full((4,), 10), ValueError),
                       (torch.full((4,), -1), ValueError), (torch.zeros(4), TypeError)):
        for call, args in ((trained.log_likelihood, (x, bad)), (trained.elbo, (x, bad)),
                           (trained.sample, (4, None, bad)), (trained.reconstructions, (x, bad))):
            with pytest.raises(error):
                call(*args)
    with pytest.raises(ValueError, match="needs int64 labels"):
        trained.reconstructions(x)
    plain = tiny_cvae(class_conditional=False)
    for call in (lambda: plain.log_likelihood(x, torch.zeros(4, dtype=torch.int64)),
                 lambda: plain.sample(4, None, torch.zeros(4, dtype=torch.int64))):
        with pytest.raises(ValueError, match="unconditional"):
            call()


def test_training_options_diagnostics_and_checkpoint_round_trip(trained, digits):
    (x, y), _ = digits
    x, y = x[:32], y[:32]
    for kwargs in ({"free_bits_nats": 0.5}, {"kl_warmup_steps": 10}):
        loss = tiny_cvae(**kwargs).training_step((x, y), 0)
        assert torch.isfinite(loss) and loss.requires_grad
    trained.validation_step((x, y), 0)  # conditional loss terms, marginal val/bpd (logs without a trainer)
    assert trained.reconstructions(x, y).shape == x.shape
    assert trained.interpolate(x[:2], x[2:4], steps=3, labels=y[:2]).shape == (2, 3, 1, 8, 8)
    assert 0 <= trained.active_units(x, labels=y) <= LATENT_DIM
    copy = VAE(**trained.hparams)
    copy.load_state_dict(trained.state_dict())
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    torch.testing.assert_close(copy.log_likelihood(x, y, iw_samples=4, generator=g()),
                               trained.log_likelihood(x, y, iw_samples=4, generator=g()))


def test_mnist_samples_are_read_as_the_requested_digits():
    """150 steps on 4096 MNIST images: the decoder's use of the label (and the per-class prior) is learned long
    before the digits are sharp, and the shipped classifier reads samples as their labels well above chance."""
    from genbench.metrics.domain import DomainExtractor

    dm = GenDataModule("mnist")
    dm.setup()
    x, y = (t[:4096] for t in dm.split("train"))
    torch.manual_seed(0)
    model = VAE(data_shape=(1, 28, 28), num_levels=256, num_classes=10, latent_dim=8, channels=(8, 16),
                num_res_blocks=0, num_mixtures=1, class_conditional=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        i = torch.randint(0, len(x), (32,), generator=g)
        loss = model.training_step((x[i], y[i]), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = torch.arange(100) % 10
    samples = model.sample(100, torch.Generator().manual_seed(1), labels)
    _, probs = DomainExtractor(dm)(samples)
    agreement = float((probs.argmax(1) == labels).float().mean())
    assert agreement > 0.2, agreement  # chance: 0.1
