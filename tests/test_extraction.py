"""The extraction suite: exact nearest neighbours, the calibrated criterion, the planted positive control,
and the leaderboard column."""

from types import SimpleNamespace

import pytest
import torch

from genbench.bench.leaderboard import table_rows
from genbench.metrics.extraction import (
    EXTRACTION_RATE,
    calibrated_ratio,
    extraction_suite,
    heldout_threshold,
    knn_l2,
)


class FakeImages:
    """A datamodule-shaped holder of iid random 1x8x8 images on 256 levels (no labels: no domain space)."""

    dataset, data_shape, num_levels, num_classes, is_continuous = "fake", (1, 8, 8), 256, 0, False

    def __init__(self, n_train=2000, n_val=1000, n_test=1000, seed=0):
        g = torch.Generator().manual_seed(seed)
        self._s = {name: torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
                   for name, n in (("train", n_train), ("val", n_val), ("test", n_test))}

    def split(self, name):
        return self._s[name], torch.zeros(len(self._s[name]), dtype=torch.long)


def test_knn_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    q, r = torch.randn(37, 5, generator=g), torch.randn(101, 5, generator=g)
    d, i = knn_l2(q, r, k=4, query_batch=8, reference_chunk=16)  # several batches and chunks
    full = torch.cdist(q.double(), r.double())
    bd, bi = full.topk(4, dim=1, largest=False)
    assert torch.equal(i, bi)
    assert torch.allclose(d.double(), bd, atol=1e-5)


def test_criterion_closed_form():
    # query at the origin; training points at distances 1, 2, 4 along one axis: d_1/d_k = 1/4 with k = 3
    r = torch.tensor([[4.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 0.0]])
    d, i = knn_l2(torch.zeros(1, 2), r, k=3)
    assert d.tolist() == [[1.0, 2.0, 4.0]] and i.tolist() == [[1, 2, 0]]
    assert calibrated_ratio(d).item() == 0.25
    assert calibrated_ratio(torch.zeros(1, 3)).item() == 0.0  # an image present k times in the training set
    # threshold: floor(0.1 * 20) = 2nd smallest (0-based) of 0.00, 0.05, ..., 0.95 -> 0.10; flags exactly 2
    ratios = torch.arange(20) / 20.0
    t = heldout_threshold(ratios, 0.1)
    assert t == pytest.approx(0.10) and int((ratios < t).sum()) == 2
    with pytest.raises(ValueError, match="fpr"):
        heldout_threshold(ratios, 1.5)


def test_planted_control_flagged_and_heldout_near_the_rate():
    dm = FakeImages()
    train = dm.split("train")[0]
    copies = train[:300]
    g = torch.Generator().manual_seed(2)
    noisy = (copies.float() + 8.0 * torch.randn(copies.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
    rate = {name: extraction_suite(s, dm, k=10, fpr=0.05)[EXTRACTION_RATE]
            for name, s in (("copies", copies), ("noisy", noisy), ("test", dm.split("test")[0]))}
    assert rate["copies"]["value"] == 1.0
    assert rate["noisy"]["value"] >= 0.98
    # iid new images: flagged near the 5 % chosen on the validation images (binomial sd ~0.7 % at n = 1000)
    assert 0.025 <= rate["test"]["value"] <= 0.08
    e = rate["test"]
    assert e["n"] == 1000 and e["k"] == 10 and e["n_reference"] == 2000 and e["n_heldout"] == 1000
    assert e["heldout_flagged_rate"] <= 0.05 and "held-out" in e["threshold_rule"]
    assert rate["copies"]["generalising"] is False and e["generalising"] is True


def test_bad_input_is_named():
    dm = FakeImages(n_train=20, n_val=10, n_test=10)
    with pytest.raises(TypeError, match="uint8"):
        extraction_suite(torch.zeros(4, 1, 8, 8), dm)
    with pytest.raises(ValueError, match="k="):
        knn_l2(torch.zeros(2, 3), torch.zeros(2, 3), k=3)


def _record(model, rate):
    entry = {"value": rate, "n": 500, "k": 10, "not_generalising_above": 0.05}
    return SimpleNamespace(model=model, family=model, params=1e4, train={}, compute={},
                           metrics={EXTRACTION_RATE: entry})


def test_leaderboard_column_flags_copying_rows():
    rows = {r["family"]: r for r in table_rows([_record("vae", 0.01), _record("gan", 0.4)])}
    assert rows["vae"]["extraction_rate"] == "0.010 (n=500, k=10)"
    assert rows["gan"]["extraction_rate"].startswith("0.400 (n=500, k=10) ⚠ copies training data")
