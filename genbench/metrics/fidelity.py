"""Sample-quality metrics: Inception features, FID, KID, precision/recall, Inception Score.

Features come from torch-fidelity's ``inception-v3-compat`` extractor (TF-FID Inception-v3, pool3 = 2048
features, torch-fidelity's own TF-1.x bilinear resize of uint8 input to 299x299). Images enter as uint8
on the dataset's grid: fewer than 256 grey levels are stretched to 0..255 (``round(k * 255 / (L-1))``)
and grey images are replicated to three channels (:func:`to_inception_input`).

* FID: the Fréchet distance between Gaussians fitted to the two feature sets, computed here in float64
  (:func:`frechet_distance`; it needs no matrix square root of a non-symmetric matrix);
* KID, precision/recall and Inception Score: torch-fidelity's own implementations on our features;
* reference features (real images) are cached on disk by dataset / split / image range / extractor
  weights sha256 / n / a digest of the images, written atomically (:func:`reference_features`).

Any object with ``name``, ``weights_sha256``, ``has_logits`` and ``__call__(uint8 [N, 3, H, W]) ->
(features [N, D], logits [N, K] or None)`` can stand in for the Inception extractor (tests use a tiny one).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from genbench.io import atomic_torch_save, cache_root
from genbench.metrics import inception, inception_files

KID_SUBSETS = 100
KID_SEED = 2020  # torch-fidelity's default rng_seed, so results equal a direct torch-fidelity call
ISC_SPLITS = 10


class FeatureExtractor(Protocol):
    name: str
    weights_sha256: str
    has_logits: bool

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class InceptionExtractor:
    """torch-fidelity's TF-FID Inception-v3 with weights from :func:`genbench.metrics.inception.resolve_weights`.

    Returns pool3 features (2048, float32) and, only when the weights carry a real 1008-class head,
    the unbiased logits used by Inception Score.
    """

    name = inception_files.EXTRACTOR_NAME

    def __init__(self, weights_path: str | None = None, device: str | torch.device = "cpu",
                 allow_download: bool = True) -> None:
        self.weights = inception.resolve_weights(weights_path, allow_download=allow_download)
        self.weights_sha256 = self.weights.sha256
        self.has_logits = self.weights.has_logits
        layers = (inception_files.FEATURE_LAYER, inception_files.LOGITS_LAYER) if self.has_logits else (inception_files.FEATURE_LAYER,)
        self.device = torch.device(device)
        self.module = inception_files.build_extractor(self.weights.path, layers, self.device)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.no_grad():
            out = self.module(images.to(self.device))
        feats = out[0].to(torch.float32).cpu()
        logits = out[1].to(torch.float32).cpu() if self.has_logits else None
        return feats, logits

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "feature_layer": inception_files.FEATURE_LAYER,
                "weights_sha256": self.weights_sha256, "weights_source": self.weights.source}


def describe_extractor(extractor: FeatureExtractor) -> dict[str, Any]:
    if hasattr(extractor, "describe"):
        return extractor.describe()
    return {"extractor": extractor.name, "weights_sha256": extractor.weights_sha256}


# ---------------------------------------------------------------------------------------------- features
def to_inception_input(x: torch.Tensor, num_levels: int = 256) -> torch.Tensor:
    """uint8 ``[N, 1|3, H, W]`` with ``num_levels`` grey levels -> uint8 ``[N, 3, H, W]`` on 0..255."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        raise TypeError(f"images must be a uint8 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {list(x.shape)}")
    if not 2 <= num_levels <= 256:
        raise ValueError(f"num_levels must be in [2, 256] for images, got {num_levels}")
    if num_levels != 256:
        if x.numel() and int(x.max()) >= num_levels:
            raise ValueError(f"images hold value {int(x.max())} >= num_levels={num_levels}")
        x = torch.round(x.to(torch.float32) * (255.0 / (num_levels - 1))).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def extract_features(
    images: torch.Tensor,
    extractor: FeatureExtractor,
    num_levels: int = 256,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (float32 ``[N, D]``) and logits (or None) of uint8 images, in batches."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    feats, logits = [], []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            batch = to_inception_input(images[start:start + batch_size], num_levels)
            f, lg = extractor(batch)
            feats.append(f.to(torch.float32).cpu())
            if lg is not None:
                logits.append(lg.to(torch.float32).cpu())
            bar.update(len(batch))
    if not feats:
        raise ValueError("extract_features got no images")
    return torch.cat(feats), (torch.cat(logits) if logits else None)


# ---------------------------------------------------------------------------------------------- metrics
def fid_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``[N, D]`` features, in float64."""
    f = np.asarray(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID statistics need at least 2 feature rows [N, D], got shape {list(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sym_sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})`` in float64.

    ``tr((S1 S2)^{1/2})`` is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    ``S1^{1/2} S2 S1^{1/2}`` (the same non-zero spectrum as ``S1 S2``), clipped at zero.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or mu1.ndim != 1 or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"inconsistent shapes: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    s1h = _sym_sqrt_psd(s1)
    m = s1h @ s2 @ s1h
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(fake: torch.Tensor, real: torch.Tensor) -> float:
    return frechet_distance(*fid_statistics(fake), *fid_statistics(real))


def kid_from_features(fake: torch.Tensor, real: torch.Tensor, subset_size: int, subsets: int = KID_SUBSETS,
                      seed: int = KID_SEED) -> tuple[float, float]:
    """KID mean and std over ``subsets`` random subsets (torch-fidelity's polynomial-kernel MMD^2)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    subset_size = min(subset_size, len(fake), len(real))
    if subset_size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(fake)} and {len(real)}")
    out = kid_features_to_metric(fake.float(), real.float(), kid_subsets=subsets, kid_subset_size=subset_size,
                                 rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def precision_recall(fake: torch.Tensor, real: torch.Tensor, neighborhood: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) via torch-fidelity, k-NN manifolds with k=neighborhood."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if min(len(fake), len(real)) <= neighborhood:
        raise ValueError(f"precision/recall needs more than k={neighborhood} images per set")
    out = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=neighborhood, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def inception_score(logits: torch.Tensor, splits: int = ISC_SPLITS) -> tuple[float, float]:
    """Inception Score mean and std from unbiased logits (only from weights with a real 1008-class head)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits.float(), splits=splits, shuffle=True, rng_seed=KID_SEED)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


# ---------------------------------------------------------------------------------------------- reference cache
def images_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.contiguous().cpu().numpy().tobytes()).hexdigest()


def reference_cache_path(dataset: str, split: str, start: int, n: int, extractor: FeatureExtractor,
                         digest: str, cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "fidelity"
    name = (f"{dataset}-{split}-{start}_{start + n}-{extractor.name}-{extractor.weights_sha256[:16]}"
            f"-n{n}-img{digest[:16]}.pt")
    return root / name


def reference_features(
    images: torch.Tensor,
    *,
    dataset: str,
    split: str,
    start: int,
    extractor: FeatureExtractor,
    num_levels: int = 256,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, Path]:
    """Features of real (un-augmented) images, cached on disk.

    ``images`` are ``split[start:start + n]``; the cache file name holds the dataset, split, range,
    extractor name and weights sha256, n and a digest of the image bytes, so a different split seed or
    weights file never reuses a stale entry. Written atomically (temporary file + ``os.replace``).
    """
    n = len(images)
    path = reference_cache_path(dataset, split, start, n, extractor, images_digest(images), cache_dir)
    if path.is_file():
        feats = load_reference_features(path, n, extractor)
        if feats is not None:
            return feats, path
    feats, _ = extract_features(images, extractor, num_levels, batch_size, progress, desc=f"{dataset} {split} features")
    save_reference_features(feats, path, extractor)
    return feats, path


def save_reference_features(feats: torch.Tensor, path: Path, extractor: FeatureExtractor) -> None:
    """Write a reference-feature cache entry atomically (temporary file in the same folder + ``os.replace``)."""
    atomic_torch_save({"features": feats, "weights_sha256": extractor.weights_sha256, "n": len(feats),
                       "features_sha256": features_sha256(feats)}, path)


def features_sha256(feats: torch.Tensor) -> str:
    return hashlib.sha256(feats.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()


def load_reference_features(path: Path, n: int, extractor: FeatureExtractor) -> torch.Tensor | None:
    """A cache entry's features if they are intact (their sha256 matches the one stored), else None.

    A file that does not load, lacks the hash (an older entry), or whose features were altered after they
    were written is recomputed, with a warning: a silently damaged cache would move FID.
    """
    import warnings

    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        feats = cached["features"]
        ok = (isinstance(feats, torch.Tensor) and feats.dim() == 2 and feats.shape[0] == n
              and cached.get("weights_sha256") == extractor.weights_sha256
              and cached.get("features_sha256") == features_sha256(feats))
    except Exception:  # noqa: BLE001 - any unreadable entry is recomputed
        ok = False
    if ok:
        return feats
    warnings.warn(f"reference-feature cache {path} is damaged or unverifiable; recomputing it", stacklevel=3)
    return None
