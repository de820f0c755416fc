"""genbench as a package: the wheel holds the code, the configs and the assets, and, installed in a fresh
virtual environment, runs ``genbench bench``, ``genbench score`` and ``genbench.evaluate`` from an empty
directory, writing only there."""

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_copy(dst: Path) -> Path:
    """The repository's tracked files (as in the working tree), so that no stale build/ leaks into the wheel."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to list the tracked files")
    src = _tracked_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = out.glob("genbench-*.whl")
    return whl


def test_package_list_matches_the_source_tree():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "genbench").rglob("__init__.py")}
    assert listed == on_disk | {"genbench.configs"}


def test_wheel_holds_code_configs_and_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (ROOT / "configs").rglob("*"):
        if f.is_file():
            assert f"genbench/configs/{f.relative_to(ROOT / 'configs').as_posix()}" in names, f
    for f in (ROOT / "genbench").rglob("*.py"):
        assert f.relative_to(ROOT).as_posix() in names, f
    assert "genbench/metrics/assets/mnist-classifier.pt" in names
    assert "genbench/configs/reference.yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "genbench = genbench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_an_installed_copy_names_its_version_not_a_surrounding_commit(tmp_path):
    from genbench.bench.record import git_sha

    (tmp_path / "lib").mkdir()  # site-packages of a venv that sits in some other checkout
    git = git_sha(tmp_path / "lib")
    assert git["sha"] is None and git["dirty"] is None and "installed_version" in git


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv that reuses this interpreter's installed dependencies (a .pth file) and holds the wheel."""
    venv = tmp / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "genbench_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_installed_wheel_runs_bench_score_and_the_api_from_an_empty_directory(wheel, tmp_path):
    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GENBENCH_HOME", "GENBENCH_CONFIGS")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_DATASETS_OFFLINE="1")

    def run(*cmd, timeout=600):
        out = subprocess.run(list(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        return out

    where = run(str(venv / "bin" / "python"), "-c", "import genbench; print(genbench.__file__)").stdout.strip()
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout
    genbench_cmd = str(venv / "bin" / "genbench")
    run(genbench_cmd, "bench", "--model", "gan", "--profile", "smoke", "--no-wandb", "--no-progress")
    record = json.loads((work / "benchmarks" / "smoke" / "results" / "mnist-smoke-gan-seed0.json").read_text())
    assert record["metrics"]["fid"]["value"] >= 0 and record["artifacts"]["run_dir"] == "runs/mnist/smoke/gan/seed0"
    assert record["config"]["trainer"]["default_root_dir"] == "runs/mnist/smoke/gan/seed0"
    assert (work / record["artifacts"]["run_dir"] / "checkpoints" / "last.ckpt").is_file()
    assert (work / "benchmarks" / "smoke" / "leaderboard.md").is_file()
    assert record["environment"]["git"]["sha"] is None and record["environment"]["git"]["installed_version"]
    assert not (work / "benchmarks" / "results").exists()  # smoke never reaches the project's records

    code = ("import numpy as np, torch, genbench\n"
            "from genbench.data import GenDataModule\n"
            "x = GenDataModule('mnist').split('train')[0][2000:2010]\n"
            "np.savez('samples.npz', samples=x.numpy())\n"
            "rec = genbench.evaluate(lambda n, g: x[:n], data='mnist', num_samples=10, metrics=['fid'])\n"
            "print(rec['metrics']['fid']['value'])\n")
    fid_api = float(run(str(venv / "bin" / "python"), "-c", code).stdout.strip().splitlines()[-1])
    run(genbench_cmd, "score", "--samples", "samples.npz", "--data", "mnist", "--metrics", "fid",
        "--output", "score.json")
    fid_score = json.loads((work / "score.json").read_text())["metrics"]["fid"]["value"]
    assert fid_score == pytest.approx(fid_api, rel=1e-9) and fid_api > 0
    assert sorted(p.name for p in work.iterdir()) == ["benchmarks", "runs", "samples.npz", "score.json"]
