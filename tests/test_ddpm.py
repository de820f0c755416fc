"""DDPM system: the UNet, the contract (sample / log_likelihood), EMA, guidance and a smoke fit through the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genbench.models import registry
from genbench.models.ddpm import DDPM, TRAIN_LOSS_QUARTILE, VAL_BPD, VAL_LOSS
from genbench.nets.unet import UNet, group_count

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def tiny(**kwargs) -> DDPM:
    args = dict(data_shape=(1, 8, 8), num_levels=17, num_classes=10, base_channels=8, channel_mults=(1, 2),
                num_res_blocks=1, attention_resolutions=(4,), dropout=0.1, sampling_steps=4, likelihood_timesteps=4)
    args.update(kwargs)
    torch.manual_seed(0)
    return DDPM(**args)


def digits_batch(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------- UNet
@pytest.mark.parametrize(("size", "mults", "attention"), [(8, (1, 2), (4,)), (28, (1, 2, 2, 2), (7,)), (32, (1, 2, 2), (16,))])
def test_unet_keeps_the_input_size_without_padding(size, mults, attention):
    net = UNet(3, 6, size, 16, mults, 1, attention, 0.0, num_classes=10)
    out = net(torch.randn(2, 3, size, size), torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert out.shape == (2, 6, size, size)
    assert group_count(48) == 24 and group_count(20, 32) == 20 and group_count(7, 4) == 1


def test_unet_of_ho_et_al_has_35_7m_parameters():
    net = UNet(3, 3, 32, 128, (1, 2, 2, 2), 2, (16,), 0.1)
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(35.7, abs=0.06)


def test_unet_output_layer_starts_at_zero():
    net = UNet(1, 1, 8, 8, (1, 2), 1, (4,), 0.0)
    assert net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).abs().max() == 0


# ---------------------------------------------------------------------------------------------- contract
def test_registered_and_rejects_continuous_data():
    assert registry.model_class("ddpm") is DDPM
    with pytest.raises(ValueError, match="discrete images"):
        DDPM(data_shape=(2,), num_levels=0)


def test_sample_contract():
    model = tiny()
    model.train()
    a = model.sample(5, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 8, 8) and a.device.type == "cpu"
    assert int(a.max()) < 17 and torch.equal(a, b)
    assert model.training  # the previous mode is restored
    assert model.sample(0).shape == (0, 1, 8, 8)
    for sampler in ("ancestral", "sde", "ode"):
        assert tiny(sampler=sampler).sample(2).shape == (2, 1, 8, 8)


def test_log_likelihood_contract():
    model = tiny()
    x = digits_batch()
    ll = model.log_likelihood(x)
    assert ll.dtype == torch.float64 and ll.shape == (6,)
    assert torch.isfinite(ll).all() and (ll < 0).all()
    bpd = -ll.mean().item() / (64 * math.log(2))
    assert 0 < bpd < 3 * math.log2(17)  # an untrained net: finite, same order as the uniform 4.09 bpd
    # seeded per image: the same checkpoint gives the same number, whatever the batching
    torch.testing.assert_close(model.log_likelihood(x[1:3]), ll[1:3], rtol=0, atol=0)
    with pytest.raises(TypeError, match="uint8"):
        model.log_likelihood(x.float())
    with pytest.raises(ValueError, match="outside"):
        model.log_likelihood(torch.full((1, 1, 8, 8), 17, dtype=torch.uint8))
    exact = tiny(likelihood_estimator="exact", num_timesteps=50)
    assert exact.likelihood_info()["network_calls_per_image"] == 50
    assert torch.isfinite(exact.log_likelihood(x[:2])).all()


def test_records_describe_sampler_and_bound():
    model = tiny(sampler="ddim", sampling_steps=25, ddim_eta=0.5)
    info = model.likelihood_info()
    assert info["kind"] == "bound" and info["estimator"] == "stratified" and info["K"] == 4 and info["T"] == 1000
    s = model.sampler_info()
    assert s["sampler"] == "ddim" and s["steps"] == 25 and s["eta"] == 0.5 and s["ema"] is True
    assert model.describe()["params"] == sum(p.numel() for p in model.net.parameters())


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_is_hidden_from_the_optimizer_and_follows_the_weights():
    model = tiny(ema_decay=0.9, ema_warmup=False)
    assert not any(p.requires_grad for p in model.ema.parameters())
    optimized = {id(p) for g in model.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.net.parameters()}
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.ema.parameters()]
    model.update_ema(model.ema_decay_at(0))
    for e, b, p in zip(model.ema.parameters(), before, model.net.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    assert tiny(ema_decay=0.999).ema_decay_at(0) == pytest.approx(0.1)  # warm-up (1 + n) / (10 + n)
    assert "ema.conv_out.weight" in model.state_dict()


def test_training_reduces_the_loss():
    model = tiny(dropout=0.0, lr=3e-3, warmup_steps=0)
    optimizer = model.configure_optimizers()["optimizer"]
    x, y = digits_batch(32), torch.zeros(32, dtype=torch.int64)
    losses = []
    for _ in range(30):
        loss = model._losses(x, y, torch.Generator().manual_seed(0))["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_classifier_free_guidance_combines_conditional_and_null_outputs():
    model = tiny(class_conditional=True, guidance_scale=3.0)

    class Stub(torch.nn.Module):
        def forward(self, x, t, y=None):  # output = label value, the null label is 10
            return y.to(x.dtype).view(-1, 1, 1, 1).expand_as(x).clone()

    labels = torch.tensor([2, 5])
    out = model._model_fn(Stub(), labels, 3.0)(torch.zeros(2, 1, 8, 8), torch.tensor([1, 1]))
    expected = 10 + 3.0 * (labels.double() - 10)
    torch.testing.assert_close(out[:, 0, 0, 0].double(), expected)
    assert model.sample(3, labels=torch.tensor([0, 1, 2])).shape == (3, 1, 8, 8)
    assert torch.isfinite(model.log_likelihood(digits_batch(2))).all()
    with pytest.raises(ValueError, match="labels"):
        tiny().sample(2, labels=torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------- CLI
def test_smoke_fit_through_the_cli(tmp_path):
    cmd = [sys.executable, "-m", "genbench", "fit", "--config", "configs/trainer/default.yaml",
           "--config", "configs/data/mnist.yaml", "--config", "configs/model/ddpm.yaml",
           "--config", "configs/profile/smoke/ddpm.yaml", "--trainer.default_root_dir", str(tmp_path),
           "--trainer.enable_progress_bar", "false"]
    env = dict(os.environ, WANDB_MODE="offline", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = sorted(tmp_path.rglob("*.ckpt"))[-1]
    model = DDPM.load_from_checkpoint(ckpt, weights_only=True)
    assert any(not torch.equal(e, p) for e, p in zip(model.ema.parameters(), model.net.parameters(), strict=True))
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.uint8 and samples.shape == (4, 1, 28, 28)
    from genbench.data import GenDataModule

    x, _ = GenDataModule("mnist").split("test")
    ll = model.log_likelihood(x[:8])
    bpd = -ll.mean().item() / (784 * math.log(2))
    assert torch.isfinite(ll).all() and 0 < bpd < 16
    header = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    for name in (VAL_LOSS, VAL_BPD, *(TRAIN_LOSS_QUARTILE.format(k) for k in range(4))):
        assert name in header
