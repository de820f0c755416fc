"""The metric table and the evaluation suites chosen from the data kind and the model's declared capabilities."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genbench.bench import leaderboard, suites
from genbench.bench.config import EvalConfig
from genbench.bench.evaluate import evaluate
from genbench.bench.suites import SUITES, SuiteConfigError, select
from genbench.capabilities import CAPABILITIES, IMAGES, LIKELIHOOD, POINTS, SAMPLER_STEPS
from genbench.data.datamodule import GenDataModule
from genbench.metrics import table as T
from genbench.models import registry

sys.path.insert(0, str(Path(__file__).parent))
from test_evaluate import CopyModel, PixelModel, ToyModel  # noqa: E402
from test_fidelity import TinyExtractor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _names(chosen):
    return [(s.name, runnable) for s, runnable in chosen]


# ------------------------------------------------------------------------------------------------ table
def test_every_metric_the_harness_emits_is_declared(digits, tmp_path):
    cfg = EvalConfig(num_samples=24, sample_batch_size=12, kid_subset_size=16, likelihood_subset=16,
                     likelihood_batch_size=8, memorization_samples=12,
                     sample_metrics=["fid", "kid", "prc", "domain"])
    outs = [evaluate(PixelModel(), digits, cfg, progress=False, feature_extractor=TinyExtractor(),
                     cache_dir=str(tmp_path)),
            evaluate(CopyModel(), digits, cfg, progress=False, feature_extractor=TinyExtractor(),
                     cache_dir=str(tmp_path))]
    toy = GenDataModule("eight_gaussians")
    toy.setup()
    outs.append(evaluate(ToyModel(), toy, EvalConfig(num_samples=64, likelihood_subset=32, memorization_samples=8),
                         progress=False))
    keys = set().union(*outs)
    # the three evaluations reach every suite but the sweep (DDPM only; covered in test_evaluate)
    assert {T.BPD, T.bpd_variant("halved"), T.NLL_NATS, T.FID, T.FID_FLOOR, T.KID, T.PRECISION, T.RECALL,
            T.INCEPTION_SCORE, T.DOMAIN_FD, T.DOMAIN_FD_FLOOR, T.CLASS_COVERAGE, T.MEMORIZATION, T.SAMPLING,
            T.MODE_COVERAGE} <= keys
    for key in keys:
        metric = T.lookup(key)  # raises KeyError for an undeclared key
        assert metric.key == key or (metric.is_prefix and key.startswith(metric.key))
    for out, kind in zip(outs, (IMAGES, IMAGES, POINTS), strict=True):
        for key, entry in out.items():
            if not (isinstance(entry, dict) and entry.get("available") is False):
                assert kind in T.lookup(key).data_kinds, key  # a computed metric respects its declared data kinds
    assert T.lookup(T.FID_VS_STEPS).capabilities == (SAMPLER_STEPS,)


def test_table_entries_are_consistent():
    assert len({m.curve_key for m in T.curve_metrics()}) == len(T.curve_metrics())
    for m in T.METRICS.values():
        assert set(m.data_kinds) <= {IMAGES, POINTS} and set(m.capabilities) <= set(CAPABILITIES)
        if m.leaderboard or m.summary or m.curve_label:
            assert m.lower_is_better is not None, m.key  # a ranked or plotted metric has a direction
    with pytest.raises(KeyError, match="not declared"):
        T.lookup("kid_typo")
    with pytest.raises(ValueError, match="alphanumeric"):
        T.bpd_variant("bad name")
    assert T.lookup("bpd_elbo").key == T.BPD_VARIANT_PREFIX and T.lookup(T.BPD).key == T.BPD
    # a sample variant's FID resolves to its prefix; the exact fid_* keys stay their own metrics
    assert T.lookup("fid_decoder_modes").key == T.FID_VARIANT_PREFIX and T.lookup(T.FID_FLOOR).key == T.FID_FLOOR


def test_leaderboard_columns_and_direction_come_from_the_table(monkeypatch):
    board = T.leaderboard_metrics()
    assert leaderboard.LOWER_IS_BETTER == {m.key: m.lower_is_better for m in board}
    assert leaderboard.DIGITS == {m.key: m.digits for m in board}
    assert [c for c in leaderboard.COLUMNS if c in T.METRICS] == [m.key for m in board]
    assert all(leaderboard.HEADERS[m.key] == m.label for m in board)
    assert leaderboard.LOWER_IS_BETTER[T.PRECISION] is False and leaderboard.LOWER_IS_BETTER[T.FID] is True
    # the best row follows each metric's declared direction: lowest FID, highest precision
    rows = [{"_num": {T.FID: 5.0, T.PRECISION: 0.2}, T.FID: "5.0", T.PRECISION: "0.200"},
            {"_num": {T.FID: 3.0, T.PRECISION: 0.1}, T.FID: "3.0", T.PRECISION: "0.100"}]
    leaderboard._mark_best(rows)
    assert rows[1]["_best"] == {T.FID} and rows[0]["_best"] == {T.PRECISION}
    assert leaderboard._markdown_cell(rows[1], T.FID) == "**3.0**" and leaderboard._markdown_cell(rows[0], T.FID) == "5.0"
    # flip a declared direction: the leaderboard follows it
    monkeypatch.setitem(leaderboard.LOWER_IS_BETTER, T.PRECISION, True)
    rows = [{"_num": {T.PRECISION: 0.2}, T.PRECISION: "0.200"}, {"_num": {T.PRECISION: 0.1}, T.PRECISION: "0.100"}]
    leaderboard._mark_best(rows)
    assert rows[1]["_best"] == {T.PRECISION} and rows[0]["_best"] == set()


def test_leaderboard_bolds_every_tied_best_row_and_none_when_all_tie():
    # ties are judged at the digits shown: 0.0004 and 0.0001 both read 0.000 (3 digits)
    rows = [{"_num": {T.EXTRACTION_RATE: 0.0004, T.FID: 3.01}}, {"_num": {T.EXTRACTION_RATE: 0.0001, T.FID: 2.96}},
            {"_num": {T.EXTRACTION_RATE: 0.0, T.FID: 9.0}}]
    leaderboard._mark_best(rows)
    assert [T.EXTRACTION_RATE in r["_best"] for r in rows] == [False, False, False]  # every row ties: no winner
    assert [T.FID in r["_best"] for r in rows] == [True, True, False]  # 3.0 and 3.0 at one digit: both bold
    rows.append({"_num": {T.EXTRACTION_RATE: 0.25, T.FID: None}})
    leaderboard._mark_best(rows)
    assert [T.EXTRACTION_RATE in r["_best"] for r in rows] == [True, True, True, False]


# ------------------------------------------------------------------------------------------------ suites
def test_models_declare_capabilities():
    registry.import_all()
    assert CopyModel().capabilities == frozenset()
    assert PixelModel().capabilities == frozenset({LIKELIHOOD})
    ddpm = registry.model_class("ddpm")
    assert ddpm.adjustable_sampling_steps and not registry.model_class("gan").adjustable_sampling_steps
    assert not registry.model_class("vae").adjustable_sampling_steps


def test_suites_are_chosen_by_data_kind_and_capability():
    full = EvalConfig(num_samples=8, memorization_samples=4, sample_metrics=["fid", "kid", "prc", "domain"])
    assert _names(select(PixelModel(), full)) == [
        ("likelihood_bpd", True), ("sampling", True), ("domain", True), ("inception_quality", True),
        ("memorization", True), ("extraction", True), ("sample_variants", True)]
    # no likelihood declared: the suite records "unavailable" instead of calling log_likelihood
    assert _names(select(CopyModel(), full))[0] == ("likelihood_bpd", False)
    assert _names(select(ToyModel(), full)) == [("likelihood_nats", True), ("sampling", True), ("toy2d_modes", True)]
    # a protocol that asks for nothing but likelihoods runs nothing else
    only_ll = EvalConfig(num_samples=0, memorization_samples=0, sample_metrics=[])
    assert _names(select(PixelModel(), only_ll)) == [("likelihood_bpd", True)]
    # the sweep needs the capability: selected for a model that declares it
    sweep = EvalConfig(num_samples=8, memorization_samples=0, sample_metrics=["fid"], sampler_steps_sweep=[2, 4])

    class Steppable(PixelModel):
        adjustable_sampling_steps = True

    assert ("sampler_sweep", True) in _names(select(Steppable(), sweep))
    assert [s.name for s in SUITES] == [s.name for s in suites.SUITES] and len({s.name for s in SUITES}) == len(SUITES)


def test_a_sweep_for_a_model_without_adjustable_steps_is_rejected_before_any_work(digits):
    cfg = EvalConfig(num_samples=8, memorization_samples=0, sample_metrics=["fid"], sampler_steps_sweep=[2])

    class Counting(PixelModel):
        calls = 0

        def sample(self, n, generator=None):
            Counting.calls += 1
            return super().sample(n, generator)

    with pytest.raises(SuiteConfigError, match="sampler_steps_sweep.*no adjustable number of sampler steps"):
        evaluate(Counting(), digits, cfg, progress=False, feature_extractor=TinyExtractor())
    assert Counting.calls == 0


def test_bench_rejects_a_sweep_for_a_gan_before_training(tmp_path):
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", "gan", "--profile", "smoke", "--no-wandb",
           "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"), "--no-progress",
           "--", "--evaluation.sampler_steps_sweep=[2,4]"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "sampler_steps_sweep" in out.stderr and "GAN" in out.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # nothing was trained
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))
