"""`python -m genbench bench` end to end for every family (smoke profile), through the real CLI."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from wandb_offline import read_offline_run

from genbench.bench.record import load_records
from genbench.models import registry

ROOT = Path(__file__).resolve().parents[1]
registry.import_all()


def bench(tmp: Path, model: str, *extra: str, data: str = "mnist", timeout: int = 600):
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", model, "--data", data, "--profile", "smoke",
           "--results-dir", str(tmp / "results"), "--runs-dir", str(tmp / "runs"), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


# latent diffusion's bench (~45 s on 2 busy cores) runs with `make test-all`; its pieces have fast tests
@pytest.mark.parametrize("model", ["ddpm", "vae", "realnvp", "gan", pytest.param("ldm", marks=pytest.mark.slow)])
def test_smoke_bench_end_to_end(model, bench_dir):
    out = bench(bench_dir, model)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    records = {r.model: r for r in load_records(bench_dir / "results")}
    rec = records[model]
    assert rec.run_id == f"mnist-smoke-{model}-seed0" and rec.family == registry.model_class(model).family
    fid = rec.metrics["fid"]
    assert fid["value"] >= 0 and fid["n"] == rec.evaluation["num_samples"] and fid["reference_split"] == "test"
    assert len(fid["weights_sha256"]) == 64
    assert rec.metrics["fid_floor"]["n"] == fid["n"]
    if rec.family == "gan":
        assert rec.metrics["bpd"]["available"] is False
    else:
        bpd = rec.metrics["bpd"]
        assert 0 < bpd["value"] < 8.5 and bpd["kind"] == "bound" and bpd["n"] > 0
        assert bpd["n"] == rec.evaluation["likelihood_subset"] == 32  # the profile's one subset
        assert bpd["value"] == pytest.approx(bpd["nll_nats"] / (bpd["num_dims"] * math.log(2)), rel=1e-12)
    if model == "ldm":  # two stages, each with its own FLOPs per image; the bound and the sampler cost declared
        stages = rec.compute["training"]["stages"]
        assert list(stages) == ["autoencoder", "latent_diffusion"]
        assert stages["autoencoder"]["images"] == stages["latent_diffusion"]["images"] == 320
        assert rec.compute["training"]["train_flops_total"] == pytest.approx(sum(s["flops"] for s in stages.values()))
        assert rec.metrics["bpd"]["L_0"] == "continuous Gaussian L_0 on latents"
        assert rec.metrics["bpd"]["latent_scale"] > 0 and rec.metrics["bpd"]["latent_scale_estimated"]
        sampling = rec.compute["sampling"]
        assert sampling["network_evaluations_per_image"] == rec.metrics["sampling"]["steps"] + 1  # + the decoder
        assert rec.metrics["fid_decoder_modes"]["value"] >= 0  # the other pixel sampler, as a variant
    if model == "realnvp":
        iw = rec.metrics["bpd_iw_dequant"]
        assert iw["K"] == 16 and iw["n"] == rec.metrics["bpd"]["n"] and iw["value"] > 0
    # the weights' own commit and config, beside the evaluating checkout's
    assert rec.train["trained_at_commit"] == rec.environment["git"]["sha"]
    assert len(rec.train["config_sha256"]) == 64 and len(rec.train["trained_by"]) == 1
    assert rec.evaluation["feature_batch_size"] == 64 and fid["feature_batch_size"] == 64
    assert rec.params > 0 and rec.train["images_per_s"] > 0 and rec.train["steps"] > 0
    assert rec.environment["versions"]["torch"] and rec.config["model"]["class_path"].startswith("genbench.models.")
    assert (bench_dir / "results" / rec.artifacts["sample_grid"]).is_file()
    # the extraction figure: samples (top) above their nearest training images, shown on the leaderboard
    extraction = rec.metrics["extraction_rate"]
    figure = bench_dir / "results" / rec.artifacts["extraction_figure"]
    assert extraction["figure"] == figure.name and "_ratio" not in extraction and "_ratio" not in extraction["domain"]
    with Image.open(figure) as im:
        assert im.size[0] > im.size[1] > 100
    board = (bench_dir / "leaderboard.md").read_text()
    assert f"({Path('results') / rec.artifacts['extraction_figure']})" in board
    assert f"| genbench | {rec.family} | {model} |" in board
    html = (bench_dir / "leaderboard.html").read_text()
    assert html.count("<table>") == 1 and html.rstrip().endswith("</html>")
    run_dir = Path(rec.artifacts["run_dir"])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


# the GAN is the cheapest variant to sample; the DDPM's (with its guidance sweep) runs with `make test-all`
@pytest.mark.parametrize("model", ["gan", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_class_conditional_bench_end_to_end(model, bench_dir):
    out = bench(bench_dir, model, "--class-conditional")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rec = {r.model: r for r in load_records(bench_dir / "results")}[f"{model}-cond"]
    assert rec.run_id == f"mnist-smoke-{model}-cond-seed0" and rec.model_info["class_conditional"] is True
    assert rec.config["model"]["init_args"]["class_conditional"] is True
    acc, fd = rec.metrics["conditional_accuracy"], rec.metrics["class_fd"]
    per_class = rec.evaluation["conditional_samples_per_class"]
    assert acc["n"] == 10 * per_class and len(acc["per_class"]) == 10 and 0 <= acc["value"] <= 1
    assert fd["classes_scored"] == 10 and fd["value"] > 0 and fd["floor"] > 0
    if model == "gan":
        assert rec.metrics["bpd_conditional"]["available"] is False
    else:
        assert rec.metrics["bpd_conditional"]["n"] == rec.metrics["bpd"]["n"]
        assert rec.metrics["label_information"]["bound"] == pytest.approx(math.log2(10) / 784)
        assert [p["scale"] for p in rec.metrics["guidance_sweep"]] == [0.0, 1.0, 2.0, 3.0, 5.0]
    with Image.open(bench_dir / "results" / rec.artifacts["class_grid"]) as im:  # one row of 10 per class
        assert im.size == (10 * 29 + 1, 10 * 29 + 1)
    grids = sorted((bench_dir / "runs" / "mnist" / "smoke" / f"{model}-cond" / "seed0" / "samples").glob("*.png"))
    with Image.open(grids[-1]) as im:  # the grids logged during training: a row of 8 per class
        assert im.size == (8 * 29 + 1, 10 * 29 + 1)
    board = (bench_dir / "leaderboard.md").read_text()
    assert "### Class-conditional" in board and f"| {model}-cond |" in board
    runs = list((bench_dir / "runs").glob(f"mnist/smoke/{model}-cond/seed0/wandb/offline-run-*"))
    assert any("samples_per_class" in p for p in read_offline_run(runs[0])["images"])


def test_wandb_offline_run_has_metrics_and_images(bench_dir):
    runs = sorted((bench_dir / "runs").glob("mnist/smoke/*/seed0/wandb/offline-run-*"))
    if not runs:
        pytest.skip("no bench ran in this session")
    for run in runs:
        content = read_offline_run(run)
        assert content["summary"]["final/fid"] >= 0 and content["summary"]["final/params"] > 0
        assert "train/loss" in content["history_keys"] and "val/loss" in content["history_keys"]
        assert any("samples" in p for p in content["images"]), "sample grids are logged as images"


def test_rerun_resumes_from_the_last_checkpoint(bench_dir):
    if not (bench_dir / "runs" / "mnist" / "smoke" / "vae" / "seed0" / "checkpoints" / "last.ckpt").is_file():
        out = bench(bench_dir, "vae")
        assert out.returncode == 0, out.stderr[-3000:]
    out = bench(bench_dir, "vae", "--no-leaderboard")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming mnist-smoke-vae-seed0" in out.stdout
    rec = {r.model: r for r in load_records(bench_dir / "results")}["vae"]
    assert rec.train["resumed_from"].endswith("last.ckpt")
    assert rec.train["curves"]["train/loss"], "the curves logged before the resume are kept"
    # the same commit and config resumed: still one training invocation on record
    assert len(rec.train["trained_by"]) == 1 and rec.train["trained_at_commit"] == rec.environment["git"]["sha"]


def test_corrupted_checkpoint_is_reported_and_kept(bench_dir):
    ckpt = bench_dir / "runs" / "mnist" / "smoke" / "gan" / "seed0" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        assert bench(bench_dir, "gan").returncode == 0
    records_before = (bench_dir / "results" / "mnist-smoke-gan-seed0.json").read_text()
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated, as after a crash of a non-atomic writer
    out = bench(bench_dir, "gan", "--no-leaderboard")
    assert out.returncode == 2
    assert "corrupted or truncated" in out.stderr and str(ckpt) in out.stderr
    assert (bench_dir / "results" / "mnist-smoke-gan-seed0.json").read_text() == records_before
    assert len(ckpt.read_bytes()) == len(data) // 2  # nothing deleted behind the user's back


def test_same_checkpoint_same_bpd_on_one_and_two_devices(bench_dir):
    ckpt = bench_dir / "runs" / "mnist" / "smoke" / "vae" / "seed0" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        assert bench(bench_dir, "vae").returncode == 0
    values = {}
    for devices in ("1", "2"):
        out_dir = bench_dir / f"eval{devices}"
        cmd = [sys.executable, "-m", "genbench", "bench", "--model", "vae", "--profile", "smoke", "--no-progress",
               "--no-wandb", "--no-leaderboard", "--checkpoint", str(ckpt), "--accelerator", "cpu",
               "--devices", devices, "--results-dir", str(out_dir / "results"), "--runs-dir", str(out_dir / "runs"),
               "--", "--evaluation.num_samples=0", "--evaluation.memorization_samples=0",
               "--evaluation.likelihood_subset=64", "--evaluation.likelihood_batch_size=16"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        (rec,) = load_records(out_dir / "results" / "eval")  # an eval-only record never joins the leaderboard's
        assert rec.train["world_size"] == int(devices) and rec.run_id.startswith("mnist-smoke-vae-seed0-eval-")
        # evaluated with other settings: the record names the config that trained the weights, from the checkpoint
        trained = {r.model: r for r in load_records(bench_dir / "results")}["vae"]
        assert rec.train["config_sha256"] == trained.train["config_sha256"]
        assert rec.train["trained_at_commit"] == trained.train["trained_at_commit"]
        values[devices] = (rec.metrics["bpd"]["value"], rec.metrics["bpd_elbo"]["value"], rec.metrics["bpd"]["n"])
    assert values["1"][2] == values["2"][2] == 64
    assert abs(values["1"][0] - values["2"][0]) < 1e-5
    assert abs(values["1"][1] - values["2"][1]) < 1e-5


def test_two_bench_runs_at_once_keep_both_records_and_the_leaderboard(tmp_path):
    """Two models benched at the same moment into one results directory: both records are written whole,
    a record written earlier is untouched, and the final leaderboard lists both models."""
    results = tmp_path / "results"
    results.mkdir()
    earlier = results / "mnist-quick-vae-seed0.json"  # a record from an earlier run
    earlier.write_bytes((ROOT / "benchmarks" / "results" / earlier.name).read_bytes())
    before = earlier.read_bytes()
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "genbench", "bench", "--model", m, "--profile", "smoke",
                               "--results-dir", str(results), "--runs-dir", str(tmp_path / "runs"), "--no-progress",
                               "--no-wandb"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for m in ("gan", "realnvp")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    names = sorted(r.run_id for r in load_records(results))
    assert names == ["mnist-quick-vae-seed0", "mnist-smoke-gan-seed0", "mnist-smoke-realnvp-seed0"]
    assert earlier.read_bytes() == before
    board = (tmp_path / "leaderboard.md").read_text()
    smoke = board[board.index("profile `smoke`"):]
    assert "| genbench | gan | gan |" in smoke and "| genbench | flow | realnvp |" in smoke
    assert "| genbench | vae | vae |" in board[board.index("profile `quick`"):board.index("profile `smoke`")]
    assert not list(results.glob(".*.tmp"))  # no temporary file left behind


def test_the_same_run_twice_at_once_is_refused(tmp_path):
    from genbench.bench.run import RunLock

    run_dir = tmp_path / "runs" / "mnist" / "smoke" / "gan" / "seed0"
    with RunLock(run_dir):  # another bench run holds this run directory
        out = bench(tmp_path, "gan", "--no-wandb", "--no-leaderboard")
    assert out.returncode == 2
    assert "another bench run is using" in out.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))


@pytest.mark.parametrize("flag", ["--results-dir", "--runs-dir"])
def test_unwritable_output_directory_fails_before_training_and_keeps_records(flag, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # nobody, root included, can create a directory below a file
    results = tmp_path / "results"
    results.mkdir()
    kept = results / "mnist-quick-gan-seed0.json"
    kept.write_bytes((ROOT / "benchmarks" / "results" / kept.name).read_bytes())
    dirs = {"--results-dir": str(results), "--runs-dir": str(tmp_path / "runs"), flag: str(blocker / "out")}
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", "gan", "--profile", "smoke", "--no-progress",
           "--no-wandb", *[x for kv in dirs.items() for x in kv]]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"pass {flag} DIR" in out.stderr and "Traceback" not in out.stderr
    assert kept.read_bytes() == (ROOT / "benchmarks" / "results" / kept.name).read_bytes()
    assert blocker.read_text() == "not a directory"


def test_no_secret_reaches_a_log_record_or_config_dump(tmp_path):
    """API keys in the environment never land in a file the bench writes: W&B run, CSV logs, record, config."""
    secret = "s3cr3t-" + "k" * 33
    env = {**__import__("os").environ, "WANDB_API_KEY": secret, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "HF_TOKEN": secret}
    cmd = [sys.executable, "-m", "genbench", "bench", "--model", "vae", "--profile", "smoke", "--no-progress",
           "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert secret not in out.stdout + out.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "config.yaml" for p in files)
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"
