"""Training-data extraction: which generated samples are copies of a training image.

The criterion is the calibrated one of Carlini et al. (2023, "Extracting Training Data from Diffusion
Models"): a sample is close to a training image only *relative* to how close it is to the rest of the
training set. For a query ``x`` with exact nearest-neighbour distances ``d_1 <= d_2 <= ... <= d_k`` to the
training split,

    ratio(x) = d_1 / d_k          (0 when d_k = 0: the image occurs k times in the training set)

A copy (or a noisy copy) of a training image has ``d_1`` far below the distance to its k-th neighbour;
a new image sits about as far from its nearest as from its k-th neighbour (ratio near 1). Carlini et al.
divide by the mean of the ``n`` nearest distances with a fixed scale ``alpha``; the k-th distance is the
same idea with one number, so the closed form is checkable by hand.

Threshold: chosen on held-out real images (the validation split, never seen in training, so none is a
copy): ``threshold`` is the ``m``-th smallest held-out ratio with ``m = floor(fpr * n_heldout)``, and a
query is flagged when ``ratio < threshold``. At most ``fpr`` of the held-out images are then flagged
(ties make it fewer); the share actually flagged is recorded. ``extraction_rate`` is the share of samples
flagged.

Spaces: pixels scaled to [0, 1] (L2), and, for labelled image datasets, the 128-d features of the domain
classifier (:mod:`genbench.metrics.domain`), each with its own held-out threshold. The pixel rate is
the headline ``value``.

Nearest neighbours are exact: every query against every image of the whole training split, in float32 on
the CPU, ``query_batch`` queries x ``reference_chunk`` training images per matrix product, keeping a running
top-k; the k distances found are then recomputed directly (``|q - r|``) so that an exact copy reports 0.
Hand-written rather than a library index (faiss, sklearn) because those are either approximate or hold the
whole N x M distance matrix. Cost: ``2 * (n_queries) * n_train * D`` FLOP; measured on this project's CPU
at one thread, 1500 queries (500 samples + 1000 held-out) against the 55 000 MNIST training images took
16-44 s on a shared, loaded 2-core machine (``benchmarks/extraction_control.md``, with its command).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch

from genbench.metrics.table import EXTRACTION_RATE

# A row whose extraction rate is above NOT_GENERALISING_FACTOR x fpr does not count as generalising. A model
# that copies nothing is flagged at about the held-out rate fpr (1 % by default); five times that, at
# n = 500 samples, has a binomial tail probability < 1e-8 for such a model, so the flag is evidence of
# copying, not noise.
NOT_GENERALISING_FACTOR = 5.0


def _flat32(images: torch.Tensor, num_levels: int) -> torch.Tensor:
    x = images.reshape(len(images), -1).to(torch.float32)
    return x / (num_levels - 1) if num_levels > 0 else x


def knn_l2(queries: torch.Tensor, reference: torch.Tensor, k: int, query_batch: int = 512,
           reference_chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest reference rows (L2) of each query row: (distances float32 ``[N, k]`` ascending,
    indices int64 ``[N, k]``). Both inputs are float ``[N, D]`` / ``[M, D]``."""
    if queries.dim() != 2 or reference.dim() != 2 or queries.shape[1] != reference.shape[1]:
        raise ValueError(f"queries {list(queries.shape)} and reference {list(reference.shape)} must be [N, D] "
                         "and [M, D] with the same D")
    if not 1 <= k <= len(reference):
        raise ValueError(f"k={k} needs 1 <= k <= the {len(reference)} reference rows; lower k or use more "
                         "training images")
    q_all, r_all = queries.to(torch.float32), reference.to(torch.float32)
    out_d = torch.empty(len(q_all), k)
    out_i = torch.empty(len(q_all), k, dtype=torch.long)
    r_norms = (r_all * r_all).sum(1)
    for qs in range(0, len(q_all), query_batch):
        q = q_all[qs:qs + query_batch]
        best_d = torch.full((len(q), 0), 0.0)
        best_i = torch.zeros((len(q), 0), dtype=torch.long)
        for rs in range(0, len(r_all), reference_chunk):
            r = r_all[rs:rs + reference_chunk]
            # |q - r|^2 up to |q|^2, which is the same for every r of one query
            d2 = r_norms[rs:rs + reference_chunk][None] - 2.0 * q @ r.T
            kk = min(k, len(r))
            d, i = d2.topk(kk, dim=1, largest=False)
            best_d, pick = torch.cat([best_d, d], 1).topk(min(k, best_d.shape[1] + kk), dim=1, largest=False)
            best_i = torch.cat([best_i, i + rs], 1).gather(1, pick)
        exact = (q[:, None, :] - r_all[best_i]).norm(dim=2)  # the distances themselves, not the expansion
        exact, order = exact.sort(1)
        out_d[qs:qs + query_batch] = exact
        out_i[qs:qs + query_batch] = best_i.gather(1, order)
    return out_d, out_i


def calibrated_ratio(knn_distances: torch.Tensor) -> torch.Tensor:
    """``d_1 / d_k`` per row of ascending distances ``[N, k]`` (0 where ``d_k = 0``)."""
    d1, dk = knn_distances[:, 0], knn_distances[:, -1]
    return torch.where(dk > 0, d1 / dk.clamp_min(1e-30), torch.zeros_like(d1))


def heldout_threshold(heldout_ratios: torch.Tensor, fpr: float) -> float:
    """The ``floor(fpr * n)``-th smallest held-out ratio (0-based): ``ratio < threshold`` flags at most
    ``fpr`` of the held-out images."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    if len(heldout_ratios) == 0:
        raise ValueError("no held-out images to choose the threshold on")
    m = int(fpr * len(heldout_ratios))
    return float(heldout_ratios.sort().values[m])


def extraction_in_space(samples: torch.Tensor, heldout: torch.Tensor, train: torch.Tensor, k: int, fpr: float,
                        space: str) -> dict[str, Any]:
    """The criterion in one feature space: float ``[N, D]`` rows of samples, held-out images and training set."""
    t0 = time.perf_counter()
    d_s, i_s = knn_l2(samples, train, k)
    d_h, _ = knn_l2(heldout, train, k)
    seconds = time.perf_counter() - t0
    r_s, r_h = calibrated_ratio(d_s), calibrated_ratio(d_h)
    threshold = heldout_threshold(r_h, fpr)
    flagged = r_s < threshold
    return {
        "value": float(flagged.double().mean()),
        "space": space,
        "n": len(samples), "k": k, "n_reference": len(train), "n_heldout": len(heldout),
        "threshold": threshold,
        "threshold_rule": f"the floor({fpr} * n_heldout)-th smallest held-out d_1/d_k; flagged when d_1/d_k < it",
        "fpr_target": fpr,
        "heldout_flagged_rate": float((r_h < threshold).double().mean()),
        "n_flagged": int(flagged.sum()),
        "median_ratio_samples": float(r_s.median()), "median_ratio_heldout": float(r_h.median()),
        "nn_wall_s": seconds, "nn_flop": 2.0 * (len(samples) + len(heldout)) * len(train) * samples.shape[1],
        # kept for the figure of flagged samples beside their nearest training images
        "_ratio": r_s, "_nearest": i_s[:, 0], "_flagged": flagged,
    }


def extraction_suite(samples: torch.Tensor, datamodule: Any, k: int = 10, fpr: float = 0.01,
                     n_heldout: int = 1000, heldout_split: str = "val", domain: bool = True,
                     domain_cache_dir: str | Path | None = None, keep_arrays: bool = False) -> dict[str, Any]:
    """Extraction metrics of uint8 ``samples`` against ``datamodule``'s whole training split.

    Args:
        samples: uint8 ``[N, C, H, W]`` generated images.
        datamodule: the :class:`~genbench.data.GenDataModule` the model was trained on.
        k: the neighbour the nearest distance is compared with (``d_1 / d_k``).
        fpr: share of held-out real images the threshold may flag.
        n_heldout: held-out images (the first ones of ``heldout_split``) the threshold is chosen on.
        heldout_split: ``val`` (carved from the official train split, never trained on) or ``test``.
        domain: also apply the criterion in the domain classifier's features (labelled image datasets).
        domain_cache_dir: cache of domain classifiers trained on first use.
        keep_arrays: keep per-sample ratios, nearest indices and flags (``_``-prefixed keys) for figures.

    Returns ``{"extraction_rate": {...}}``: the pixel-space rate as ``value`` with n, k, threshold and how it
    was chosen, and the domain-feature criterion under ``"domain"``.
    """
    if datamodule.is_continuous:
        raise ValueError("extraction_suite needs image data; toy2d points have no training images to copy")
    if samples.dtype != torch.uint8 or tuple(samples.shape[1:]) != tuple(datamodule.data_shape):
        raise TypeError(f"samples must be uint8 {[None, *datamodule.data_shape]}, got {samples.dtype} "
                        f"{list(samples.shape)}")
    if len(samples) == 0:
        raise ValueError("extraction_suite needs at least one sample")
    train = datamodule.split("train")[0]
    heldout = datamodule.split(heldout_split)[0][:n_heldout]
    if len(heldout) == 0:
        raise ValueError(f"the {heldout_split} split is empty: no held-out images to choose the threshold on; "
                         "set data.val_size > 0 or heldout_split='test'")
    k = min(k, len(train))  # a training subset smaller than k: compare with its farthest image (recorded)
    levels = datamodule.num_levels
    entry = extraction_in_space(_flat32(samples, levels), _flat32(heldout, levels), _flat32(train, levels), k, fpr,
                                "pixels scaled to [0, 1], L2")
    entry["heldout_split"] = f"{heldout_split}[0:{len(heldout)}]"
    if domain and datamodule.num_classes >= 2:
        from genbench.metrics.domain import DomainExtractor

        extractor = DomainExtractor(datamodule, cache_dir=domain_cache_dir)
        feats = [extractor(samples)[0], extractor(heldout)[0], _train_features(extractor, train, domain_cache_dir)]
        dom = extraction_in_space(*feats, k, fpr, "domain classifier features (128-d), L2")
        dom["weights_sha256"] = extractor.weights_sha256
        entry["domain"] = dom if keep_arrays else public_entry(dom)
    entry["not_generalising_above"] = NOT_GENERALISING_FACTOR * fpr
    entry["generalising"] = entry["value"] <= entry["not_generalising_above"]
    return {EXTRACTION_RATE: entry if keep_arrays else public_entry(entry)}


def _train_features(extractor: Any, train: torch.Tensor, cache_dir: str | Path | None) -> torch.Tensor:
    """Domain features of the training split, cached on disk by (weights, training images): computing them
    costs a classifier pass over every training image (about a minute for MNIST at one thread)."""
    from genbench.io import atomic_torch_save, cache_root

    digest = hashlib.sha256(train.numpy().tobytes()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "extraction"
    path = root / f"{extractor.dataset}-{extractor.weights_sha256[:16]}-train{len(train)}-{digest}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    feats = extractor(train)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(feats, path)
    return feats


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` without the per-sample arrays that ``keep_arrays=True`` adds (the record's JSON form)."""
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def save_flagged_figure(samples: torch.Tensor, train: torch.Tensor, entry: dict[str, Any], path: Path,
                        num_levels: int = 256, max_pairs: int = 12, title: str = "") -> Path:
    """The flagged samples (lowest ratio first; the least-copied samples when none is flagged) above their
    nearest training images, each captioned with its d_1/d_k. ``entry`` comes from ``keep_arrays=True``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio, nearest, flagged = entry["_ratio"], entry["_nearest"], entry["_flagged"]
    order = ratio.argsort()
    pick = order[flagged[order]][:max_pairs] if bool(flagged.any()) else order[:max_pairs]
    cols = max(1, len(pick))
    fig, axes = plt.subplots(2, cols, figsize=(1.1 * cols + 0.6, 2.6), dpi=100, squeeze=False)
    for j, i in enumerate(pick.tolist()):
        for row, img in ((0, samples[i]), (1, train[int(nearest[i])])):
            ax = axes[row][j]
            ax.imshow(img.float().permute(1, 2, 0).squeeze(-1).numpy() / (num_levels - 1), cmap="gray",
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[0][j].set_title(f"{float(ratio[i]):.2f}" + (" ✓" if bool(flagged[i]) else ""), fontsize=7)
    axes[0][0].set_ylabel("sample", fontsize=7)
    axes[1][0].set_ylabel("nearest train", fontsize=7)
    state = f"{int(flagged.sum())}/{len(flagged)} flagged" if bool(flagged.any()) else "none flagged: lowest ratios"
    fig.suptitle(f"{title} ({state}; d1/dk, threshold {entry['threshold']:.2f})", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
