"""Result records: schema round trip, atomic writes, secrets redacted; the leaderboard built from records."""

import json
import math
from html.parser import HTMLParser

import pytest

from genbench import paths
from genbench.bench import leaderboard
from genbench.bench.record import ResultRecord, atomic_write_text, load_records, redact, write_record


def make_record(model="ddpm", family="diffusion", seed=0, bpd=1.5, fid=50.0, dataset="digits", profile="smoke"):
    return ResultRecord(
        run_id=f"{dataset}-{profile}-{model}-seed{seed}", model=model, family=family, dataset=dataset,
        profile=profile, seed=seed,
        metrics={"bpd": {"value": bpd, "stderr": 0.01, "n": 100, "kind": "bound"},
                 "fid": {"value": fid, "n": 50, "reference_split": "test"},
                 "kid": {"value": 0.01, "std": 0.001}, "precision": {"value": 0.5}, "recall": {"value": 0.4},
                 "fid_floor": {"value": 5.0, "n": 50, "protocol": "train subset vs test"},
                 "sampling": {"images_per_s": 10.0, "sampler": "ddim", "steps": 50}},
        params=12345, train={"wall_time_s": 60.0, "images_per_s": 100.0, "curves": {"train/loss": [[0, 1.0], [10, 0.5]]}},
        evaluation={}, data={}, model_info={}, environment={}, config={"wandb": {"api_key": "SECRET"}},
    )


def test_record_round_trip_and_redaction(tmp_path):
    path = write_record(make_record(), tmp_path)
    d = json.loads(path.read_text())
    assert d["config"]["wandb"]["api_key"] == "<redacted>" and "SECRET" not in path.read_text()
    (rec,) = load_records(tmp_path)
    assert rec.metrics["bpd"]["value"] == 1.5 and rec.schema_version == 1
    assert redact({"token": "x", "a": [{"password": 1}]}) == {"token": "<redacted>", "a": [{"password": "<redacted>"}]}


def test_unreadable_record_is_skipped(tmp_path, capsys):
    write_record(make_record(), tmp_path)
    (tmp_path / "broken.json").write_text("{ not json")
    assert len(load_records(tmp_path)) == 1
    assert "skipping unreadable result record" in capsys.readouterr().out


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_text(p, "old")

    with pytest.raises(TypeError):
        atomic_write_text(p, 12345)  # not a str: the write fails mid-way
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_unwritable_directory_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # even root cannot create a directory below a file
    with pytest.raises(OSError, match="choose a writable directory"):
        atomic_write_text(blocker / "results" / "x.json", "x")
    assert blocker.read_text() == "not a directory"


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in ("meta", "img", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()


def test_leaderboard_rows_seeds_best_and_html(tmp_path):
    res = tmp_path / "results"
    write_record(make_record(seed=0, bpd=1.5), res)
    write_record(make_record(seed=1, bpd=1.7), res)
    write_record(make_record(seed=1, bpd=1.7), res)  # a rerun replaces its record: no duplicate row
    write_record(make_record(model="vae", family="vae", bpd=1.2, fid=80.0), res)
    md, page = leaderboard.build(res, tmp_path)
    text = md.read_text()
    assert "## digits — profile `smoke`" in text
    ddpm_rows = [line for line in text.splitlines() if "| ddpm |" in line]
    assert len(ddpm_rows) == 1 and "1.600 ± 0.141" in ddpm_rows[0] and "| 2 |" in ddpm_rows[0]
    vae_row = next(line for line in text.splitlines() if "| vae |" in line)
    assert "**1.200" in vae_row  # best bits/dim is marked
    assert "**50.0" in ddpm_rows[0]  # best FID is marked
    assert "per-pixel histogram" in text and "real vs real" in text
    checker = _Checker()
    checker.feed(page.read_text())
    assert not checker.stack and checker.tags.count("table") == 1 and "img" in checker.tags


def test_leaderboard_shows_published_rows(tmp_path):
    res = tmp_path / "results"
    write_record(make_record(dataset="mnist", profile="quick"), res)
    md, _ = leaderboard.build(res, tmp_path, paths.reference_file())
    text = md.read_text()
    assert "| published | flow | RealNVP |" in text and "1.06" in text
    assert "1.690 (exact)" in text  # the MNIST per-pixel histogram baseline, computed from the data


def test_git_dirty_ignores_the_benchs_own_outputs(tmp_path):
    import subprocess

    from genbench.bench.record import git_sha

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "r.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    assert git_sha(tmp_path)["dirty"] is False
    (tmp_path / "benchmarks" / "results" / "r.json").write_text('{"new": 1}\n')  # a new record: still clean
    assert git_sha(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_sha(tmp_path)["dirty"] is True


def test_checkpoint_carries_the_commit_and_config_that_trained_it(tmp_path):
    """TrainingProvenance: each invocation that trains adds its commit and config hash to the checkpoint; a
    resumed run keeps the earlier entries, and an evaluation-only read reports the last trainer's."""
    import lightning as L
    import torch

    from genbench.bench.callbacks import PROVENANCE_KEY, TrainingProvenance, config_sha256
    from genbench.data import GenDataModule
    from genbench.models.realnvp import RealNVP

    def fit(max_steps, sha, config, ckpt_path=None):
        prov = TrainingProvenance()
        prov.set_config(config, git={"sha": sha, "dirty": False})
        dm = GenDataModule("digits", batch_size=16, train_subset=64)
        model = RealNVP(data_shape=(1, 8, 8), num_levels=17, num_scales=2, mid_channels=4, num_blocks=0)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, limit_val_batches=0,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=str(tmp_path), callbacks=[prov])
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        trainer.save_checkpoint(tmp_path / "last.ckpt")
        return prov

    first = fit(2, "a" * 40, {"model": 1})
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert state[PROVENANCE_KEY]["history"] == [{"commit": "a" * 40, "dirty": False,
                                                  "config_sha256": config_sha256({"model": 1})}]
    assert first.record_fields()["trained_at_commit"] == "a" * 40
    assert len(first.record_fields()["config_sha256"]) == 64
    assert config_sha256({"a": 1, "b": 2}) == config_sha256({"b": 2, "a": 1}) != config_sha256({"a": 2, "b": 2})

    resumed = fit(4, "b" * 40, {"model": 2}, ckpt_path=tmp_path / "last.ckpt")  # trains 2 more steps
    fields = resumed.record_fields()
    assert fields["trained_at_commit"] == "b" * 40 and fields["config_sha256"] == config_sha256({"model": 2})
    assert [e["commit"] for e in fields["trained_by"]] == ["a" * 40, "b" * 40]

    evaluator = TrainingProvenance()  # the --checkpoint path: trains nothing, reads the checkpoint
    evaluator.set_config({"model": 3}, git={"sha": "c" * 40, "dirty": True})
    evaluator.load_from(torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True))
    assert evaluator.record_fields()["trained_at_commit"] == "b" * 40
    old = TrainingProvenance()
    old.load_from({"state_dict": {}})  # a checkpoint written before provenance was stored
    assert old.record_fields() == {"trained_at_commit": None, "trained_at_dirty": None, "config_sha256": None,
                                   "trained_by": []}


def test_leaderboard_bpd_cells_show_se_n_kind_and_nats(tmp_path):
    res = tmp_path / "results"
    nats = 1.3 * 784 * math.log(2)
    new = make_record(model="realnvp", family="flow", bpd=1.3)
    new.metrics["bpd"] = {"value": 1.3, "stderr": 0.0066, "n": 1000, "subset": "test[0:1000]", "num_dims": 784,
                          "nll_nats": nats, "nll_nats_stderr": 0.0066 * 784 * math.log(2), "kind": "bound",
                          "dequantization": "uniform", "draws": 1}
    new.metrics["bpd_iw_dequant"] = {"value": 1.29, "stderr": 0.0064, "n": 1000, "subset": "test[0:1000]",
                                     "num_dims": 784, "nll_nats": 1.29 * 784 * math.log(2), "K": 16, "kind": "bound"}
    new.metrics["fid_floor"].update({"kid": 0.0009, "kid_std": 0.0003})
    new.train.update({"trained_at_commit": "1234567890abcdef", "trained_at_dirty": False, "config_sha256": "f" * 64})
    write_record(new, res)
    text = leaderboard.build(res, tmp_path)[0].read_text()
    row = next(line for line in text.splitlines() if "| realnvp |" in line)
    assert "1.300 (se 0.007, n=1000; bound: uniform dequantization, 1 draw)" in row
    floor = next(line for line in text.splitlines() if "real vs real" in line)
    assert "0.0009 ± 0.0003" in floor  # the floor's KID with its std
    assert f"realnvp: {nats:.1f} ± 3.6 nats per image over D=784 = 1.300 bits/dim on test[0:1000]" in text
    assert "realnvp bpd_iw_dequant (K=16): " in text and "different test subsets" not in text
    assert "realnvp trained at 1234567890ab, config sha256 ffffffffffff…" in text

    # an old record: a flow's bpd labelled "exact" beside a uniform dequantization, on another subset, no nats
    old = make_record(model="oldflow", family="flow", bpd=1.32)
    old.metrics["bpd"] = {"value": 1.32, "stderr": 0.0066, "n": 2000, "subset": "test[0:2000]", "kind": "exact",
                          "dequantization": "uniform dequantization (Jensen bound on the discrete likelihood)",
                          "draws": 1}
    write_record(old, res)
    text = leaderboard.build(res, tmp_path)[0].read_text()
    row = next(line for line in text.splitlines() if "| oldflow |" in line)
    assert "(se 0.007, n=2000; bound: uniform dequantization, 1 draw)" in row and "exact" not in row
    assert "oldflow: 1.320 bits/dim on test[0:2000] (nats not recorded)" in text
    assert "different test subsets (test[0:1000], test[0:2000])" in text
    assert "oldflow trained at: not recorded" in text
