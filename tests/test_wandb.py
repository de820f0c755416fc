"""W&B: offline without an API key; disabled on request; metrics flattened for the run summary."""

from genbench.bench import run as bench_run
from genbench.bench.wandb_utils import flatten_metrics


def test_offline_without_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert not bench_run.wandb_key_configured()
    logger = bench_run.make_logger("r", tmp_path, group="g", tags=["t"], enabled=True)
    assert logger is not False
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert (tmp_path / "wandb_id.txt").is_file()
    again = (tmp_path / "wandb_id.txt").read_text()
    bench_run.make_logger("r", tmp_path, group="g", tags=["t"], enabled=True)
    assert (tmp_path / "wandb_id.txt").read_text() == again  # a resumed run keeps its W&B id


def test_key_in_environment_means_online(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert bench_run.wandb_key_configured()


def test_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert bench_run.make_logger("r", tmp_path, group="g", tags=[], enabled=True) is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert bench_run.make_logger("r", tmp_path, group="g", tags=[], enabled=False) is False


def test_flatten_metrics():
    flat = flatten_metrics({"fid": {"value": 3.5, "n": 500, "extractor": "x"}, "bpd": {"available": False}})
    assert flat == {"final/fid": 3.5, "final/fid.n": 500}
