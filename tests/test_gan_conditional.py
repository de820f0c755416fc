"""Class-conditional GAN: conditional BatchNorm, the projection discriminator, labels in the contract, training
with labels, and a short MNIST fit whose samples the shipped domain classifier reads as the requested digits."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch.nn.utils import parametrize

from genbench.models.base import LikelihoodUnavailable
from genbench.models.gan import GAN
from genbench.nets.dcgan import (
    ConditionalBatchNorm,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)

TINY = dict(data_shape=(1, 8, 8), num_levels=17, num_classes=10, g_channels=4, d_channels=4, latent_dim=8)


def _perturb_embeddings(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every conditional BatchNorm distinct per-class gains and biases (at init they ignore the label)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ConditionalBatchNorm):
                m.gain.weight.copy_(1 + 0.5 * torch.randn(m.gain.weight.shape, generator=g))
                m.bias.weight.copy_(0.5 * torch.randn(m.bias.weight.shape, generator=g))


# ---------------------------------------------------------------- conditional BatchNorm
@pytest.mark.parametrize("spatial", [True, False])
def test_conditional_batch_norm_starts_as_batch_norm_and_then_depends_on_the_class(spatial):
    torch.manual_seed(0)
    x = 3 + 2 * torch.randn(6, 5, 4, 4) if spatial else 3 + 2 * torch.randn(6, 5)
    plain = torch.nn.BatchNorm2d(5) if spatial else torch.nn.BatchNorm1d(5)
    cbn = ConditionalBatchNorm(5, num_classes=3, spatial=spatial)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(cbn(x, labels), plain(x), atol=1e-6)  # gain 1, bias 0 for every class
    assert torch.allclose(cbn.norm.running_mean, plain.running_mean) and torch.allclose(cbn.norm.running_var, plain.running_var)
    cbn.eval(), plain.eval()
    assert torch.allclose(cbn(x, labels), plain(x), atol=1e-6)  # running statistics too

    _perturb_embeddings(cbn)
    same = cbn(x[:1].expand(3, *x.shape[1:]), torch.tensor([0, 1, 2]))
    assert not torch.allclose(same[0], same[1]) and not torch.allclose(same[1], same[2])
    shape = (1, -1) + (1,) * (x.dim() - 2)
    expected = cbn.gain.weight[1].view(shape) * plain(x[:1]) + cbn.bias.weight[1].view(shape)
    assert torch.allclose(same[1:2], expected, atol=1e-6)


def test_one_class_generator_reproduces_the_unconditional_generator_at_init():
    plain = DCGANGenerator((1, 28, 28), latent_dim=8, base_channels=4)
    cond = DCGANGenerator((1, 28, 28), latent_dim=8, base_channels=4, num_classes=1)
    shared = plain.state_dict()
    # the conditional nets own no BatchNorm affine; their running statistics sit one level deeper (.norm)
    state = {k: shared[k.replace(".norm.", ".")] for k in cond.state_dict() if k.replace(".norm.", ".") in shared}
    assert cond.load_state_dict(state, strict=False).missing_keys == [k for k in cond.state_dict() if k not in state]
    assert all(".gain." in k or ".bias.weight" in k for k in cond.state_dict() if k not in state)
    z, labels = torch.randn(5, 8), torch.zeros(5, dtype=torch.long)
    assert torch.allclose(cond(z, labels), plain(z), atol=1e-6)
    cond.eval(), plain.eval()
    assert torch.allclose(cond(z, labels), plain(z), atol=1e-6)


def test_generators_need_labels_exactly_when_conditional():
    cond = DCGANGenerator((1, 8, 8), latent_dim=8, base_channels=4, num_classes=3)
    with pytest.raises(ValueError, match="needs labels of shape"):
        cond(torch.randn(2, 8))
    with pytest.raises(ValueError, match="unconditional"):
        DCGANGenerator((1, 8, 8), latent_dim=8, base_channels=4)(torch.randn(2, 8), torch.tensor([0, 1]))
    mlp = MLPGenerator(2, latent_dim=4, hidden=8, num_layers=2, num_classes=3)
    z = torch.randn(1, 4).expand(3, 4)
    out = mlp(z, torch.tensor([0, 1, 2]))  # the one-hot label is an input: different classes, different points
    assert out.shape == (3, 2) and not torch.allclose(out[0], out[1])


# ---------------------------------------------------------------- projection discriminator
@pytest.mark.parametrize("sn", [False, True])
def test_projection_discriminator_is_head_plus_inner_product(sn):
    torch.manual_seed(0)
    d = DCGANDiscriminator((1, 8, 8), base_channels=4, norm="none", spectral_norm=sn, num_classes=5)
    assert parametrize.is_parametrized(d.embed, "weight") == sn == parametrize.is_parametrized(d.score, "weight")
    d.eval()  # spectral norm: no power iteration, so repeated reads of the weights agree
    x, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 4, 2, 2])
    phi = d.features(x).flatten(1)
    w, b, e = d.score.weight, d.score.bias, d.embed.weight  # spectrally normalised weights where sn
    expected = phi @ w[0] + b[0] + (e[labels] * phi).sum(1)
    assert torch.allclose(d(x, labels), expected, atol=1e-5)
    if sn:  # the embedding has the head's normalisation: largest singular value 1
        assert torch.linalg.matrix_norm(e.detach(), ord=2) == pytest.approx(1.0, abs=0.02)

    mlp = MLPDiscriminator(2, hidden=8, num_layers=2, spectral_norm=sn, num_classes=5).eval()
    pts = torch.randn(4, 2)
    phi = mlp.net[:-1](pts)
    expected = mlp.score(phi).squeeze(1) + (mlp.embed.weight[labels] * phi).sum(1)
    assert torch.allclose(mlp(pts, labels), expected, atol=1e-5)


def test_unconditional_nets_are_unchanged_by_the_option():
    """num_classes=0 builds the same modules, from the same RNG draws, as before the option existed."""
    torch.manual_seed(0)
    g, d = DCGANGenerator((1, 28, 28), 8, 4), DCGANDiscriminator((1, 28, 28), 4)
    assert not any(isinstance(m, ConditionalBatchNorm) for m in g.modules()) and not hasattr(d, "embed")
    assert [k for k in g.state_dict()][:3] == ["project.0.weight", "project.1.weight", "project.1.bias"]


# ---------------------------------------------------------------- the contract
def test_sample_with_labels():
    model = GAN(**TINY, class_conditional=True)
    assert model.class_conditional and "class_conditional" in model.capabilities
    _perturb_embeddings(model.generator_ema)
    x = model.sample(10, torch.Generator().manual_seed(1), torch.arange(10))
    assert x.dtype == torch.uint8 and x.shape == (10, 1, 8, 8) and int(x.max()) <= 16
    threes = model.sample(10, torch.Generator().manual_seed(1), torch.full((10,), 3))
    # the same noise: only the label differs, and only where it differs do the images
    differs = (x != threes).flatten(1).any(1)
    assert not differs[3] and differs[torch.arange(10) != 3].all()
    # without labels: uniform classes drawn on the generator, reproducibly
    assert torch.equal(model.sample(7, torch.Generator().manual_seed(2)), model.sample(7, torch.Generator().manual_seed(2)))
    assert model.sample(0, labels=torch.zeros(0, dtype=torch.long)).shape == (0, 1, 8, 8)
    for bad in (torch.tensor([0, 10]), torch.tensor([-1, 0]), torch.tensor([0, 1, 2])):
        with pytest.raises(ValueError, match="labels must"):
            model.sample(2, labels=bad)
    with pytest.raises(TypeError, match="integer"):
        model.sample(2, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(LikelihoodUnavailable, match="no density"):
        model.log_likelihood(x, torch.arange(10))
    info = model.describe()
    assert info["class_conditional"] and "projection" in info["sampler"]["conditioning"]


def test_unconditional_gan_rejects_labels():
    model = GAN(**TINY)
    assert not model.class_conditional and model.describe()["sampler"]["conditioning"] == "none"
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(2, labels=torch.tensor([0, 1]))


def test_conditional_points_and_unlabelled_data():
    model = GAN(data_shape=(2,), num_levels=0, num_classes=8, latent_dim=4, mlp_hidden=16, class_conditional=True)
    assert model.sample(5, labels=torch.tensor([0, 1, 2, 3, 7])).shape == (5, 2)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        GAN(data_shape=(2,), num_levels=0, num_classes=1, class_conditional=True)


def test_state_dict_round_trip():
    model = GAN(**TINY, class_conditional=True)
    _perturb_embeddings(model, seed=3)
    state = model.state_dict()
    assert {"generator.project.1.gain.weight", "generator_ema.stages.1.bias.weight", "discriminator.embed.weight"} <= set(state)
    restored = GAN(**TINY, class_conditional=True)
    restored.load_state_dict(state)
    labels = torch.tensor([1, 5, 9])
    assert torch.equal(model.sample(3, torch.Generator().manual_seed(0), labels),
                       restored.sample(3, torch.Generator().manual_seed(0), labels))
    with pytest.raises(RuntimeError, match="Unexpected key"):  # a conditional checkpoint is no unconditional GAN
        GAN(**TINY).load_state_dict(state)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize(
    "loss, d_norm, sn, n_critic, precision",
    [("non_saturating", "batch", False, 1, "32-true"), ("hinge", "none", True, 1, "32-true"),
     ("wgan_gp", "layer", False, 2, "bf16-mixed")],
)
def test_training_steps_move_the_class_embeddings(loss, d_norm, sn, n_critic, precision, tmp_path, one_thread):
    """Every loss trains with labels (real labels for real images, uniform labels for fakes); G's, the EMA's
    and D's class embeddings all move."""
    torch.manual_seed(0)
    x = torch.randint(0, 17, (48, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (48,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    model = GAN(**TINY, loss=loss, d_norm=d_norm, spectral_norm=sn, n_critic=n_critic, class_conditional=True)
    initial = copy.deepcopy(model)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, loader)
    assert int(model.num_d_steps) == 6 and int(model.num_g_steps) == 6 // n_critic
    for net in ("generator", "generator_ema"):  # the EMA follows the per-class gains too
        before, after = getattr(initial, net).project[1].gain.weight, getattr(model, net).project[1].gain.weight
        assert not torch.equal(before, after)
    assert not torch.equal(initial.discriminator.embed.weight, model.discriminator.embed.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_short_mnist_fit_draws_the_requested_digits(one_thread):
    """120 generator steps on 2048 MNIST digits (tiny nets, lr 2e-3): the shipped classifier reads the samples
    as their requested labels well above chance (0.1): 0.48-0.59 over seeds 0-4, about 12 s of training on one core."""
    from genbench.data.datamodule import GenDataModule
    from genbench.metrics.domain import DomainExtractor

    dm = GenDataModule("mnist")
    dm.setup()
    x, y = dm.split("train")
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:2048], y[:2048]), batch_size=64,
                                         shuffle=True, drop_last=True)
    model = GAN(data_shape=dm.data_shape, num_levels=dm.num_levels, num_classes=dm.num_classes, latent_dim=16,
                g_channels=8, d_channels=8, lr_g=2e-3, lr_d=2e-3, class_conditional=True)
    trainer = L.Trainer(max_steps=2 * 120, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, loader)
    labels = torch.arange(10).repeat(20)
    _, probs = DomainExtractor(dm)(model.sample(200, torch.Generator().manual_seed(0), labels))
    accuracy = (probs.argmax(1) == labels).float().mean().item()
    assert accuracy > 0.2, accuracy
