"""One restoration benchmark: a trained DDPM, a task, n test images -> metrics of DDNM and its baselines.

For each task the first ``n`` test images are degraded (y = A x + sigma_y n; masks and noise from ``seed``)
and restored by four methods, all scored the same way:

* ``ddnm``: the DDPM's sampler with the DDNM(+) rectification (:mod:`genbench.restoration.ddnm`);
* ``sampler_only``: the same sampler, steps and random draws without rectification (it ignores y);
* ``pinv``: A⁺y alone;
* ``classical``: the task's model-free method (:mod:`genbench.restoration.classical`).

Metrics (:data:`METRICS`): PSNR and SSIM (torchmetrics, on [0, 1] pixels after quantisation to the data's
grey levels) against the ground truth; data consistency ‖A x̂ - y‖₂ per image of the float restoration
(before quantisation) and of the quantised image; the domain Fréchet distance of the restorations against
real test images disjoint from the restored ones (:mod:`genbench.metrics.domain`, beside the same distance
for the ground-truth images, the floor at this n); seconds per image, measured in this run.
Every image draws its sampler noise from its own generator, so the results do not depend on the batching.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from genbench.data.transforms import to_model_space, to_pixels
from genbench.restoration.classical import classical
from genbench.restoration.ddnm import ddnm_sample
from genbench.restoration.operators import Operator, measure, task

METHODS = ("ddnm", "sampler_only", "pinv", "classical")
PSNR_DB, SSIM, CONSISTENCY, CONSISTENCY_PIXELS, DOMAIN_FD, SECONDS_PER_IMAGE = (
    "psnr_db", "ssim", "consistency_l2", "consistency_l2_pixels", "domain_fd", "seconds_per_image")
METRICS = (PSNR_DB, SSIM, CONSISTENCY, CONSISTENCY_PIXELS, DOMAIN_FD, SECONDS_PER_IMAGE)
REFERENCE_START = 5000  # real reference images for the domain FD: test[5000:5000 + n_reference]
CONSISTENCY_RTOL = 1e-4  # noise-free y: ‖A x̂ - y‖ / ‖y‖ of DDNM must stay below this (float32 rounding)


class RestorationError(RuntimeError):
    """A restoration benchmark cannot run as asked: the message names the problem and the fix."""


def image_generators(seed: int, n: int) -> list[torch.Generator]:
    """One generator per image: image i's sampler noise depends only on (seed, i)."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(n)]


def score(restored: torch.Tensor, truth_pixels: torch.Tensor, operator: Operator, y: torch.Tensor,
          num_levels: int) -> tuple[dict[str, float], torch.Tensor]:
    """Per-method metrics (means over images) and the quantised restoration."""
    pixels = to_pixels(restored, num_levels)
    pred = pixels.to(torch.float32) / (num_levels - 1)
    target = truth_pixels.to(torch.float32) / (num_levels - 1)
    psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    residual = (operator.A(restored.to(torch.float64)) - y.to(torch.float64)).flatten(1).norm(dim=1)
    residual_px = (operator.A(to_model_space(pixels, num_levels, torch.float64)) - y.to(torch.float64)).flatten(1).norm(dim=1)
    return {PSNR_DB: float(psnr.mean()), "psnr_db_se": float(psnr.std() / len(psnr) ** 0.5),
            SSIM: float(ssim.mean()), CONSISTENCY: float(residual.mean()),
            CONSISTENCY_PIXELS: float(residual_px.mean())}, pixels


def restore_task(model: Any, datamodule: Any, task_name: str, n: int, steps: int, sampler: str, eta: float,
                 sigma_y: float | None, seed: int, batch_size: int, extractor: Any,
                 shared: dict[str, Any] | None = None,
                 travel: tuple[int, int] = (0, 1)) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Run every method on one task; returns (the record's ``task`` section, images for the figure).

    ``shared`` caches the ``sampler_only`` restorations (they do not depend on the task) between tasks of
    one invocation with the same n, steps, sampler, eta, seed and time-travel. ``travel`` = (length, repeat)
    of DDNM's time-travel, applied to both sampler runs (length 0: none).
    """
    from genbench.metrics.fidelity import fid_from_features

    spec = task(task_name)
    sigma = spec.sigma_y if sigma_y is None else float(sigma_y)
    test_x, _ = datamodule.split("test")
    if n < 2 or n > REFERENCE_START:
        raise RestorationError(f"--n must be in 2..{REFERENCE_START} (the test images after that are the real "
                               f"reference of the domain FD), got {n}")
    shape = tuple(model.data_shape)
    levels = model.num_levels
    truth_pixels = test_x[:n]
    truth = to_model_space(truth_pixels, levels)
    gen = torch.Generator().manual_seed(seed)
    operator = spec.operator(n, shape, gen)
    y = measure(operator, truth, sigma, gen)
    fn = model._model_fn(model.sampling_net)
    clip = bool(model.hparams.clip_denoised)

    def sample(rectify: bool) -> tuple[torch.Tensor, float]:
        gens = image_generators(seed, n)
        t0 = time.perf_counter()
        outs = []
        for s in range(0, n, batch_size):
            sl = slice(s, min(s + batch_size, n))
            with torch.autocast(device_type="cpu", enabled=False):
                outs.append(ddnm_sample(model.diffusion, fn, operator.rows(sl), y[sl], (sl.stop - s, *shape),
                                        sampler=sampler, num_steps=steps, eta=eta, sigma_y=sigma, rectify=rectify,
                                        generator=gens[sl], clip_denoised=clip, travel_length=travel[0],
                                        travel_repeat=travel[1]))
        return torch.cat(outs), (time.perf_counter() - t0) / n

    restored: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    restored["ddnm"], seconds["ddnm"] = sample(True)
    key = f"{n}-{steps}-{sampler}-{eta}-{seed}-{travel}"
    if shared is not None and key in shared:
        restored["sampler_only"], seconds["sampler_only"] = shared[key]
    else:
        restored["sampler_only"], seconds["sampler_only"] = sample(False)
        if shared is not None:
            shared[key] = (restored["sampler_only"], seconds["sampler_only"])
    t0 = time.perf_counter()
    restored["pinv"] = operator.pinv(y)
    seconds["pinv"] = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    classical_name, restored["classical"] = classical(operator, y, sigma)
    seconds["classical"] = (time.perf_counter() - t0) / n

    reference = test_x[REFERENCE_START:REFERENCE_START + max(n, 1000)]
    ref_feats, _ = extractor(reference)
    truth_feats, _ = extractor(truth_pixels)
    methods: dict[str, Any] = {}
    pixels: dict[str, torch.Tensor] = {}
    for name in METHODS:
        metrics, pixels[name] = score(restored[name], truth_pixels, operator, y, levels)
        feats, _ = extractor(pixels[name])
        metrics[DOMAIN_FD] = fid_from_features(feats, ref_feats)
        metrics[SECONDS_PER_IMAGE] = seconds[name]
        methods[name] = metrics
    methods["classical"]["method"] = classical_name
    methods["sampler_only"]["shared_across_tasks"] = shared is not None
    y_norm = float(y.to(torch.float64).flatten(1).norm(dim=1).mean())
    if sigma == 0 and methods["ddnm"][CONSISTENCY] > CONSISTENCY_RTOL * y_norm:
        raise RestorationError(f"DDNM's restorations are not consistent with noise-free y: mean ‖Ax̂-y‖ = "
                               f"{methods['ddnm'][CONSISTENCY]:.3g} against ‖y‖ = {y_norm:.3g}")
    section = {
        "task": task_name, "summary": spec.summary, "operator": operator.describe(), "sigma_y": sigma,
        "n": n, "seed": seed, "mean_y_norm": y_norm,
        "consistency_checked": sigma == 0, "consistency_rtol": CONSISTENCY_RTOL if sigma == 0 else None,
        "domain_fd_floor": fid_from_features(truth_feats, ref_feats),
        "domain_fd_reference": f"test images {REFERENCE_START}..{REFERENCE_START + len(reference) - 1}",
        "domain_fd_extractor": extractor.describe(),
        "methods": methods,
    }
    display = operator.display(y)
    figure = {"y": display, "pinv": restored["pinv"], "ddnm": restored["ddnm"], "truth": truth}
    if hasattr(operator, "mask"):
        figure["mask"] = operator.mask
    return section, figure

