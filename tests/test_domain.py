"""The labelled domain metric: a small classifier, shipped for MNIST by sha256, trained deterministically
elsewhere; Fréchet distance in its features and class coverage; never in the FID column."""

import shutil

import pytest
import torch

from genbench.bench.config import EvalConfig
from genbench.bench.evaluate import evaluate
from genbench.data import GenDataModule
from genbench.metrics import domain
from genbench.metrics import table as N


@pytest.fixture(scope="module")
def mnist():
    dm = GenDataModule("mnist")
    dm.setup()
    return dm


def test_shipped_mnist_classifier_is_pinned_and_accurate(mnist):
    ex = domain.DomainExtractor(mnist)
    d = ex.describe()
    assert d["pinned"] and d["weights_sha256"] == domain.SHIPPED["mnist"]
    assert d["test_accuracy"] >= 0.98
    x, y = mnist.split("test")
    assert domain.accuracy(ex.net, x[:2000], y[:2000], mnist.num_levels) >= 0.97  # the file really is that net


def test_domain_fd_orders_real_noise_and_a_collapsed_set(mnist):
    ex = domain.DomainExtractor(mnist)
    (train_x, train_y), test_x = mnist.split("train"), mnist.split("test")[0]
    real = domain.domain_metrics(train_x[:500], test_x[:500], None, ex)
    noise = domain.domain_metrics(torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8), test_x[:500], None, ex)
    threes = domain.domain_metrics(train_x[train_y == 3][:500], test_x[:500], None, ex)
    assert real[N.DOMAIN_FD]["value"] < 30 < 300 < min(noise[N.DOMAIN_FD]["value"], threes[N.DOMAIN_FD]["value"])
    assert real[N.CLASS_COVERAGE]["classes_covered"] == 10 and real[N.CLASS_COVERAGE]["value"] < 0.1
    assert threes[N.CLASS_COVERAGE]["classes_covered"] == 1 and threes[N.CLASS_COVERAGE]["value"] > 0.8
    assert "not FID" in real[N.DOMAIN_FD]["label"]


def test_a_tampered_shipped_file_is_refused(mnist, tmp_path, monkeypatch):
    shutil.copy(domain.ASSETS / "mnist-classifier.pt", tmp_path / "mnist-classifier.pt")
    with open(tmp_path / "mnist-classifier.pt", "ab") as f:
        f.write(b"\0")
    monkeypatch.setattr(domain, "ASSETS", tmp_path)
    with pytest.raises(ValueError, match="not the pinned .* git checkout"):
        domain.DomainExtractor(mnist)


def test_training_is_deterministic_and_leaves_the_global_rng_alone(digits, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    recipe = domain.Recipe(epochs=1)
    a = domain.build(digits, tmp_path / "a.pt", recipe)
    b = domain.build(digits, tmp_path / "b.pt", recipe)
    assert a["sha256"] == b["sha256"]  # the same bytes: same weights, same archive
    assert torch.equal(torch.get_rng_state(), before)
    assert a["test_accuracy"] > 0.5  # 10 classes: far above chance after one epoch


def test_unshipped_dataset_trains_once_and_caches(digits, tmp_path):
    first = domain.DomainExtractor(digits, cache_dir=tmp_path)
    assert not first.describe()["pinned"] and first.path.parent == tmp_path
    mtime = first.path.stat().st_mtime_ns
    again = domain.DomainExtractor(digits, cache_dir=tmp_path)
    assert again.path.stat().st_mtime_ns == mtime and again.weights_sha256 == first.weights_sha256


def test_evaluate_reports_domain_metrics_beside_not_instead_of_fid(digits, tmp_path):
    from test_evaluate import PixelModel

    cfg = EvalConfig(num_samples=64, sample_batch_size=32, sample_metrics=["domain"], likelihood_subset=8,
                     memorization_samples=0)
    out = evaluate(PixelModel(), digits, cfg, progress=False, cache_dir=str(tmp_path))
    assert N.FID not in out and N.KID not in out  # no Inception work was asked for
    fd, floor, cov = out[N.DOMAIN_FD], out[N.DOMAIN_FD_FLOOR], out[N.CLASS_COVERAGE]
    assert fd["n"] == floor["n"] == 64 and fd["reference_split"] == "test"
    assert floor["value"] < fd["value"]  # real-vs-real beats an independent-pixel model
    assert 0 <= cov["value"] <= 1 and len(cov["sample_histogram"]) == 10
