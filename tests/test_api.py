"""The public API ``genbench.evaluate`` and the ``genbench score`` command."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fidelity import TinyExtractor, _ImagesDataset

import genbench
from genbench.metrics import fidelity, inception
from genbench.score import SamplesError, to_nchw

ROOT = Path(__file__).resolve().parents[1]


def replay(images: torch.Tensor):
    """sample_fn handing out ``images`` in order."""
    state = {"i": 0}

    def sample_fn(n, generator):
        assert isinstance(generator, torch.Generator)
        out = images[state["i"]: state["i"] + n]
        state["i"] += n
        return out

    return sample_fn


def test_sample_fn_and_log_likelihood_give_fid_and_bpd(digits, tmp_path):
    n = 40
    samples = digits.split("train")[0][100:100 + n]
    levels, dims = digits.num_levels, math.prod(digits.data_shape)

    def uniform_ll(x):  # the uniform distribution over 17^64 images: exactly log2(17) bits/dim
        return torch.full((len(x),), -dims * math.log(levels), dtype=torch.float64)

    tiny = TinyExtractor()
    rec = genbench.evaluate(replay(samples), data=digits, num_samples=n, metrics=["fid", "kid", "bpd"],
                            log_likelihood=uniform_ll, feature_extractor=tiny, cache_dir=str(tmp_path),
                            likelihood_subset=50)
    m = rec["metrics"]
    fake, _ = fidelity.extract_features(samples, tiny, levels)
    real, _ = fidelity.extract_features(digits.split("test")[0][:n], tiny, levels)
    assert m["fid"]["value"] == pytest.approx(fidelity.fid_from_features(fake, real), rel=1e-9)
    assert m["fid"]["n"] == n and "kid" in m and "precision" not in m
    assert m["bpd"]["value"] == pytest.approx(math.log2(levels), rel=1e-12) and m["bpd"]["n"] == 50
    assert rec["evaluation"]["num_samples"] == n and rec["data"]["dataset"] == "digits"
    assert rec["model_info"]["family"] == "external"


def test_a_generative_model_scores_without_its_likelihood_unless_asked(digits, tmp_path):
    from test_contract import smoke_model

    model = smoke_model("realnvp", digits)
    rec = genbench.evaluate(model, data=digits, num_samples=8, metrics=["fid"], feature_extractor=TinyExtractor(),
                            cache_dir=str(tmp_path))
    assert "bpd" not in rec["metrics"] and rec["metrics"]["fid"]["n"] == 8
    assert rec["model_info"]["family"] == "flow"
    rec = genbench.evaluate(model, data=digits, num_samples=0, metrics=["bpd"], likelihood_subset=8)
    assert rec["metrics"]["bpd"]["n"] == 8 and rec["metrics"]["bpd"]["value"] > 0 and "fid" not in rec["metrics"]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"metrics": ["fid", "bpd"]}, ValueError, "needs log_likelihood"),
    ({"metrics": ["fdi"]}, ValueError, "unknown metric"),
    ({"metrics": []}, ValueError, "empty"),
])
def test_bad_requests_fail_before_any_work(digits, kwargs, error, match):
    with pytest.raises(error, match=match):
        genbench.evaluate(replay(digits.split("train")[0]), data=digits, num_samples=8, **kwargs)


def test_a_sample_fn_of_the_wrong_kind_is_named(digits):
    with pytest.raises(TypeError, match="dtype torch.float32, expected torch.uint8"):
        genbench.evaluate(lambda n, g: torch.zeros(n, 1, 8, 8), data=digits, num_samples=8, metrics=["fid"],
                          feature_extractor=TinyExtractor())
    with pytest.raises(ValueError, match=r"shape \[8, 1, 4, 4\], expected \[8, 1, 8, 8\]"):
        genbench.evaluate(lambda n, g: torch.zeros(n, 1, 4, 4, dtype=torch.uint8), data=digits, num_samples=8,
                          metrics=["fid"], feature_extractor=TinyExtractor())


def test_samples_are_read_as_nchw_uint8():
    x = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    assert to_nchw(x, (3, 8, 8), "s").shape == (5, 3, 8, 8)
    assert to_nchw(np.zeros((5, 8, 8), dtype=np.uint8), (1, 8, 8), "s").shape == (5, 1, 8, 8)
    with pytest.raises(SamplesError, match="uint8"):
        to_nchw(np.zeros((5, 8, 8), dtype=np.float32), (1, 8, 8), "s")
    with pytest.raises(SamplesError, match=r"do not match the data's \[N, 1, 28, 28\]"):
        to_nchw(np.zeros((5, 1, 8, 8), dtype=np.uint8), (1, 28, 28), "s")


def _score(*args, cwd):
    return subprocess.run([sys.executable, "-m", "genbench", "score", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_score_command_rejects_bad_samples_clearly(tmp_path):
    np.savez(tmp_path / "s.npz", samples=np.zeros((10, 1, 8, 8), dtype=np.uint8))
    out = _score("--samples", str(tmp_path / "s.npz"), "--data", "mnist", cwd=tmp_path)
    assert out.returncode == 2 and "do not match the data's [N, 1, 28, 28]" in out.stderr
    out = _score("--samples", str(tmp_path / "missing"), "--data", "mnist", cwd=tmp_path)
    assert out.returncode == 2 and "give a folder of PNG/JPEG images or an .npz file" in out.stderr
    assert not (tmp_path / "benchmarks").exists()


def test_score_and_evaluate_equal_a_direct_torch_fidelity_call(tmp_path):
    """``genbench score`` on an .npz, ``genbench.evaluate`` and torch-fidelity's own ``calculate_metrics`` on the
    same images give the same FID (real Inception; n kept small: Inception runs at a few images/s on a CPU)."""
    import torch_fidelity

    from genbench.data import GenDataModule

    try:
        extractor = fidelity.InceptionExtractor(allow_download=False)
    except inception.InceptionWeightsError as e:
        pytest.skip(f"no offline Inception weights: {e}")
    dm = GenDataModule("mnist")
    n = 12
    fake = dm.split("train")[0][1000:1000 + n]  # "samples": real digits, disjoint from the floor's train[0:n]
    real = dm.split("test")[0][:n]
    # the API first: the command then finds the real images' features in the (default) feature cache
    api = genbench.evaluate(replay(fake), data=dm, num_samples=n, metrics=["fid"],
                            inception_weights=extractor.weights.path)
    ref = torch_fidelity.calculate_metrics(
        input1=_ImagesDataset(fake), input2=_ImagesDataset(real), fid=True, cuda=False, cache=False, verbose=False,
        save_cpu_ram=True, feature_extractor_weights_path=extractor.weights.path)
    expected = ref["frechet_inception_distance"]
    assert api["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-6)
    np.savez(tmp_path / "samples.npz", samples=fake.numpy())
    out = _score("--samples", str(tmp_path / "samples.npz"), "--data", "mnist", "--metrics", "fid",
                 "--output", str(tmp_path / "score.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads((tmp_path / "score.json").read_text())
    assert scored["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-6)
    assert scored["samples"]["n_scored"] == n and scored["metrics"]["fid"]["n_reference"] == n
