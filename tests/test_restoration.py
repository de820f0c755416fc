"""Restoration: operator identities, DDNM's data consistency and its equality with the plain samplers
without rectification, the classical baselines on closed forms, and `genbench restore` end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genbench.diffusion import GaussianDiffusion, make_betas
from genbench.diffusion.samplers import sample as plain_sample
from genbench.restoration.classical import harmonic_fill
from genbench.restoration.ddnm import ddnm_sample, network_evaluations, travel_levels
from genbench.restoration.operators import TASKS, AveragePool, Blur, Identity, Mask, measure

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"grey": (1, 28, 28), "colour": (3, 32, 32)}


def operators(shape, n=3):
    c, h, w = shape
    g = torch.Generator().manual_seed(0)
    return {"box": Mask.box(n, h, w), "random50": Mask.random(n, h, w, 0.5, g), "random80": Mask.random(n, h, w, 0.8, g),
            "sr2": AveragePool(2), "sr4": AveragePool(4), "identity": Identity(), "blur": Blur(h, w)}


@pytest.mark.parametrize("colour", list(SHAPES))
@pytest.mark.parametrize("name", ["box", "random50", "random80", "sr2", "sr4", "identity", "blur"])
def test_penrose_identities(name, colour):
    shape = SHAPES[colour]
    op = operators(shape)[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    z = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    y = op.A(torch.randn(3, *shape, generator=g, dtype=torch.float64))
    proj = lambda v: op.pinv(op.A(v))  # noqa: E731
    torch.testing.assert_close(op.A(op.pinv(op.A(x))), op.A(x), atol=1e-10, rtol=0)  # A A⁺ A = A
    torch.testing.assert_close(op.pinv(op.A(op.pinv(y))), op.pinv(y), atol=1e-10, rtol=0)  # A⁺ A A⁺ = A⁺
    torch.testing.assert_close(proj(proj(x)), proj(x), atol=1e-10, rtol=0)  # A⁺A idempotent
    # A⁺A is symmetric (an orthogonal projection): <P x, z> = <x, P z>
    torch.testing.assert_close((proj(x) * z).sum(), (x * proj(z)).sum(), atol=1e-9, rtol=0)
    torch.testing.assert_close(op.A(op.project_null(x)), torch.zeros_like(op.A(x)), atol=1e-10, rtol=0)


def test_average_pool_pinv_is_s2_times_adjoint():
    op = AveragePool(4)
    x = torch.randn(2, 3, 28, 28, dtype=torch.float64)
    y = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    _, adjoint = torch.autograd.functional.vjp(op.A, x, y)
    torch.testing.assert_close(op.pinv(y), 16 * adjoint)


def test_blur_is_a_unit_gain_gaussian_and_its_null_space_is_the_cut_frequencies():
    op = Blur(28, 28, sigma_px=1.5, cutoff=0.05)
    delta = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    delta[0, 0, 0, 0] = 1.0
    psf = op.A(delta)[0, 0]
    assert float(psf.sum()) == pytest.approx(1.0, abs=1e-12)  # DC is kept: a constant image passes unchanged
    torch.testing.assert_close(psf, psf.flip(0).roll(1, 0))  # symmetric about pixel 0 (circular)
    assert 0.1 < op.kept_fraction < 0.9
    assert op.noise_gain() == pytest.approx(1 / 0.05, rel=0.5)


def test_masks_are_seeded_and_have_the_stated_missing_fraction():
    a = Mask.random(200, 28, 28, 0.8, torch.Generator().manual_seed(3)).mask
    b = Mask.random(200, 28, 28, 0.8, torch.Generator().manual_seed(3)).mask
    assert torch.equal(a, b)
    assert float(1 - a.mean()) == pytest.approx(0.8, abs=0.01)
    box = Mask.box(1, 28, 28).mask
    assert int((box == 0).sum()) == 14 * 14


def tiny_diffusion(var_type="learned_range"):
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(make_betas("cosine", 100), var_type=var_type)
    out_channels = diffusion.output_channels(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, out_channels, 3, padding=1))
    return diffusion, (lambda x, t: net(x) * 0.5)


@pytest.mark.parametrize("sampler,eta,steps", [("ancestral", 0.0, 100), ("ancestral", 0.0, 7), ("ddim", 0.0, 10),
                                               ("ddim", 0.85, 1), ("ddim", 0.85, 13)])
@pytest.mark.parametrize("task", ["inpaint_box", "inpaint_80", "sr4", "blur"])
def test_ddnm_output_is_consistent_with_noise_free_measurements(task, sampler, eta, steps):
    diffusion, model = tiny_diffusion()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    g = torch.Generator().manual_seed(0)
    op = TASKS[task].operator(4, (1, 28, 28), g)
    y = measure(op, x, 0.0, g)
    out = ddnm_sample(diffusion, model, op, y, (4, 1, 28, 28), sampler=sampler, num_steps=steps, eta=eta,
                      generator=torch.Generator().manual_seed(1))
    residual = (op.A(out) - y).flatten(1).norm(dim=1)
    assert float(residual.max()) < 1e-4 * float(y.flatten(1).norm(dim=1).min())
    # and the rectification did something: the plain sampler is far from y
    plain = ddnm_sample(diffusion, model, op, y, (4, 1, 28, 28), sampler=sampler, num_steps=steps, eta=eta,
                        rectify=False, generator=torch.Generator().manual_seed(1))
    assert float((op.A(plain) - y).flatten(1).norm(dim=1).min()) > 1.0


@pytest.mark.parametrize("sampler,eta", [("ancestral", 0.0), ("ddim", 0.0), ("ddim", 0.85)])
@pytest.mark.parametrize("var_type", ["learned_range", "fixed_large"])
def test_without_rectification_it_is_the_plain_sampler(sampler, eta, var_type):
    diffusion, model = tiny_diffusion(var_type)
    op = Identity()
    y = torch.zeros(3, 1, 28, 28)
    ours = ddnm_sample(diffusion, model, op, y, (3, 1, 28, 28), sampler=sampler, num_steps=9, eta=eta, rectify=False,
                       generator=torch.Generator().manual_seed(5))
    theirs = plain_sample(diffusion, model, (3, 1, 28, 28), sampler=sampler, num_steps=9, eta=eta,
                          generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_ddnm_plus_keeps_the_noise_level_of_a_pure_noise_measurement():
    """Denoising y = x + sigma_y n with DDNM+ trades the sampler's fresh noise for the noise carried by A⁺y, so
    the output is never noisier than y; plain DDNM (lambda = 1 throughout) would copy y exactly."""
    diffusion, model = tiny_diffusion()
    x = torch.zeros(4, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    y = measure(Identity(), x, 0.5, g)
    out = ddnm_sample(diffusion, model, Identity(), y, (4, 1, 28, 28), sampler="ancestral", num_steps=50,
                      sigma_y=0.5, generator=torch.Generator().manual_seed(1))
    assert float((out - y).abs().mean()) > 0.05  # not a copy of y
    assert float(out.std()) < float(y.std())


def test_per_image_generators_make_restorations_independent_of_the_batching():
    from genbench.restoration.run import image_generators

    diffusion, model = tiny_diffusion()
    op = Mask.random(4, 28, 28, 0.5, torch.Generator().manual_seed(0))
    y = op.A(torch.rand(4, 1, 28, 28) * 2 - 1)
    whole = ddnm_sample(diffusion, model, op, y, (4, 1, 28, 28), num_steps=6, generator=image_generators(0, 4))
    gens = image_generators(0, 4)
    halves = [ddnm_sample(diffusion, model, op.rows(slice(s, s + 2)), y[s:s + 2], (2, 1, 28, 28), num_steps=6,
                          generator=gens[s:s + 2]) for s in (0, 2)]
    torch.testing.assert_close(torch.cat(halves), whole, atol=1e-5, rtol=0)


def test_time_travel_schedule_and_its_consistency():
    assert travel_levels(4) == [3, 2, 1, 0, -1]
    assert travel_levels(6, 2, 1) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert network_evaluations(6, 2, 1) == 6 + 2 * 2 and network_evaluations(50, 5, 2) == 50 + 9 * 5 * 2
    diffusion, model = tiny_diffusion()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    op = AveragePool(2)
    y = op.A(x)
    out = ddnm_sample(diffusion, model, op, y, (3, 1, 28, 28), sampler="ancestral", num_steps=8, travel_length=3,
                      travel_repeat=2, generator=torch.Generator().manual_seed(0))
    assert float((op.A(out) - y).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="time-travel"):
        travel_levels(5, -1)


def test_noisy_measurements_refuse_a_deterministic_sampler():
    diffusion, model = tiny_diffusion()
    with pytest.raises(ValueError, match="stochastic steps"):
        ddnm_sample(diffusion, model, Identity(), torch.zeros(1, 1, 28, 28), (1, 1, 28, 28), sampler="ddim", eta=0.0,
                    sigma_y=0.1)


def test_harmonic_fill_reproduces_a_harmonic_image():
    ramp = (torch.arange(28, dtype=torch.float64)[None, :] * 0.05 + torch.arange(28, dtype=torch.float64)[:, None] * -0.03)
    images = ramp.expand(1, 2, 28, 28).clone()
    mask = Mask.box(1, 28, 28).mask
    filled = harmonic_fill(images * mask, mask)
    torch.testing.assert_close(filled, images, atol=1e-8, rtol=0)


def _tiny_checkpoint(path: Path) -> None:
    """A Lightning-format checkpoint of a smoke-sized DDPM (untrained: enough for the plumbing and consistency)."""
    from genbench.models.ddpm import DDPM

    hp = {"data_shape": (1, 28, 28), "num_levels": 256, "num_classes": 10, "base_channels": 8, "channel_mults": [1, 2],
          "num_res_blocks": 1, "attention_resolutions": [14], "beta_schedule": "cosine", "var_type": "learned_range",
          "loss_type": "hybrid"}
    torch.manual_seed(0)
    model = DDPM(**hp)
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"_class_path": "genbench.models.ddpm.DDPM", **hp},
                "datamodule_hyper_parameters": {"dataset": "mnist", "split_seed": 0, "val_size": None},
                "global_step": 0}, path)


def _restore(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "genbench", "restore", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_restore_cli_writes_records_figures_and_the_leaderboard_section(tmp_path):
    ckpt = tmp_path / "runs" / "mnist" / "smoke" / "ddpm" / "seed0" / "checkpoints" / "last.ckpt"
    _tiny_checkpoint(ckpt)
    results = tmp_path / "benchmarks" / "results"
    proc = _restore(["--checkpoint", str(ckpt), "--task", "inpaint_50,denoise", "--n", "4", "--steps", "3",
                     "--results-dir", str(results)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((results / "restoration" / "mnist-smoke-ddpm-seed0-inpaint_50.json").read_text())
    assert rec["operator"]["name"] == "mask" and rec["sigma_y"] == 0 and rec["n"] == 4 and rec["seed"] == 0
    assert rec["sampler"] == {**rec["sampler"], "name": "ddim", "steps": 3, "eta": 0.85, "rectification": "DDNM"}
    assert set(rec["methods"]) == {"ddnm", "sampler_only", "pinv", "classical"}
    assert rec["consistency_checked"] and rec["methods"]["ddnm"]["consistency_l2"] < 1e-4 * rec["mean_y_norm"]
    assert rec["methods"]["pinv"]["consistency_l2"] < 1e-6  # A A⁺ y = y for a mask
    assert rec["methods"]["classical"]["method"] == "harmonic fill"
    assert all(rec["methods"][m]["seconds_per_image"] > 0 for m in ("ddnm", "sampler_only"))
    noisy = json.loads((results / "restoration" / "mnist-smoke-ddpm-seed0-denoise.json").read_text())
    assert noisy["sigma_y"] == 0.2 and noisy["sampler"]["rectification"] == "DDNM+" and not noisy["consistency_checked"]
    # the sampler without rectification is shared between the tasks of one invocation
    assert noisy["methods"]["sampler_only"]["psnr_db"] == rec["methods"]["sampler_only"]["psnr_db"]
    assert (results / "restoration" / rec["figure"]).stat().st_size > 1000
    board = (tmp_path / "benchmarks" / "leaderboard.md").read_text()
    assert "## Restoration (zero-shot, DDNM)" in board and "| inpaint_50 | 0 | DDNM |" in board
    assert "figures/mnist-smoke-ddpm-seed0-denoise.png" in board


def _restore_in_process(args, capsys):
    from genbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["restore", *args])
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--task", "paint"], "unknown --task 'paint'"),
    (["--task", "denoise", "--eta", "0"], "stochastic steps"),
    (["--task", "sr4", "--steps", "0"], "--steps and --batch-size must be >= 1"),
    (["--task", "sr2", "--n", "6000"], "--n must be in 2..5000"),
])
def test_restore_bad_input_is_a_clear_error(args, message, tmp_path, capsys):
    code, err = _restore_in_process(["--checkpoint", str(tmp_path / "missing.ckpt"), *args], capsys)
    assert code == 2 and message in err


def test_restore_refuses_a_missing_or_non_ddpm_checkpoint(tmp_path, capsys):
    code, err = _restore_in_process(["--checkpoint", str(tmp_path / "missing.ckpt")], capsys)
    assert code == 2 and "does not exist" in err
    bad = tmp_path / "vae.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "genbench.models.vae.VAE"}}, bad)
    code, err = _restore_in_process(["--checkpoint", str(bad)], capsys)
    assert code == 2 and "is not a DDPM" in err
