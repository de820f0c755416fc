"""A fast domain metric: Fréchet distance in the features of a small classifier trained on the dataset.

Inception-v3 features are the standard for FID, but on a 2-core CPU they cost seconds per image, and they
were learned on ImageNet photographs, not on 28x28 digits. This module offers a cheap companion for CPU
profiles, always reported under its own names (``domain_fd``, ``domain_fd_floor``, ``class_coverage``) and
never in the FID column:

* **the classifier**: a small CNN (two 3x3 conv layers, 16 and 32 channels, 4x4 adaptive max pooling, a
  128-unit feature layer, a linear head) trained deterministically on the training split with a fixed
  recipe (:data:`RECIPE`: seed, epochs, batch size, Adam learning rate, one thread). MNIST's weights ship in
  ``genbench/metrics/assets/`` and are loaded only when their sha256 equals the pinned :data:`SHIPPED`
  value; any other image dataset trains its classifier once on first use and caches it under
  ``$GENBENCH_CACHE/domain`` (its sha256 is recorded, ``pinned: false``). ``python
  benchmarks/train_domain_classifier.py`` retrains the shipped file and reports whether the sha matches.
* **domain FD**: the Fréchet distance (float64, :func:`genbench.metrics.fidelity.frechet_distance`) between
  Gaussians fitted to the 128-d features of samples and of real images, beside the real-vs-real floor at
  the same n. Values are only comparable for the same weights sha256.
* **class coverage**: the classifier's predicted-class histogram of the samples against that of the real
  images: total-variation distance, the classes that receive at least half their real share (mode
  dropping shows here), and the mean top-class confidence.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genbench.io import atomic_torch_save, atomic_write_text, cache_root
from genbench.metrics import table as T
from genbench.metrics.fidelity import fid_from_features

ASSETS = Path(__file__).resolve().parent / "assets"
FEATURE_DIM = 128
# sha256 of the shipped weights files (genbench/metrics/assets/<dataset>-classifier.pt)
SHIPPED = {
    "mnist": "86905a8178c1a0d78587c67e073fbdda87d3732b4be45e3fcedb2ef56777dae6",
}


@dataclass(frozen=True)
class Recipe:
    """How a domain classifier is trained; part of its identity (cache key, record)."""

    seed: int = 0
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    threads: int = 1  # CPU reductions depend on the thread count: one thread makes training repeatable

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


RECIPE = Recipe()


class SmallClassifier(nn.Module):
    """conv3x3(16) - ReLU - maxpool2 - conv3x3(32) - ReLU - adaptive maxpool 4x4 - fc(128) - ReLU - fc(classes)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return feats, self.head(feats)


def to_input(images: torch.Tensor, num_levels: int) -> torch.Tensor:
    """uint8 images on ``num_levels`` grey levels -> float32 in [-1, 1]."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"images must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}")
    return images.to(torch.float32) * (2.0 / (num_levels - 1)) - 1.0


class _Threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_levels: int, num_classes: int,
                     recipe: Recipe = RECIPE) -> SmallClassifier:
    """Train a :class:`SmallClassifier` deterministically (own generators, fixed thread count).

    The global RNG is left untouched, so evaluating a model never changes what it would draw next.
    """
    with torch.random.fork_rng(devices=[]), _Threads(recipe.threads):
        torch.manual_seed(recipe.seed)
        net = SmallClassifier(x.shape[1], num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
        order = torch.Generator().manual_seed(recipe.seed)
        net.train()
        for _ in range(recipe.epochs):
            perm = torch.randperm(len(x), generator=order)
            for start in range(0, len(x), recipe.batch_size):
                idx = perm[start:start + recipe.batch_size]
                _, logits = net(to_input(x[idx], num_levels))
                loss = nn.functional.cross_entropy(logits, y[idx].long())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval()


def accuracy(net: SmallClassifier, x: torch.Tensor, y: torch.Tensor, num_levels: int, batch_size: int = 1000) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            _, logits = net(to_input(x[start:start + batch_size], num_levels))
            correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
    return correct / max(len(x), 1)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class DomainExtractor:
    """The domain classifier of one dataset: 128-d features and class probabilities of uint8 images.

    Args:
        datamodule: a :class:`~genbench.data.GenDataModule` of an image dataset with class labels.
        cache_dir: where classifiers trained on first use are kept (default ``$GENBENCH_CACHE/domain``).
    """

    def __init__(self, datamodule: Any, cache_dir: str | Path | None = None) -> None:
        if datamodule.is_continuous or datamodule.num_classes < 2:
            raise ValueError(f"no domain classifier for {datamodule.dataset!r}: it needs labelled images")
        self.dataset = datamodule.dataset
        self.num_levels = datamodule.num_levels
        self.num_classes = datamodule.num_classes
        shipped = ASSETS / f"{self.dataset}-classifier.pt"
        if self.dataset in SHIPPED and shipped.is_file():
            self.path, self.pinned = shipped, True
        else:
            root = Path(cache_dir) if cache_dir is not None else cache_root() / "domain"
            self.path, self.pinned = root / f"{self.dataset}-classifier-{RECIPE.key()}.pt", False
            if not self.path.is_file():
                build(datamodule, self.path)
        data = self.path.read_bytes()  # hashed and loaded from the same bytes
        self.weights_sha256 = hashlib.sha256(data).hexdigest()
        if self.pinned and self.weights_sha256 != SHIPPED[self.dataset]:
            raise ValueError(f"{shipped} has sha256 {self.weights_sha256}, not the pinned {SHIPPED[self.dataset]}; "
                             "restore it with git checkout, or retrain it with benchmarks/train_domain_classifier.py")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.info = dict(state["info"])
        self.net = SmallClassifier(datamodule.data_shape[0], self.num_classes)
        self.net.load_state_dict(state["state_dict"])
        self.net.eval()

    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(features float32 [N, 128], class probabilities float32 [N, K])."""
        feats, probs = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                f, logits = self.net(to_input(images[start:start + batch_size].cpu(), self.num_levels))
                feats.append(f)
                probs.append(logits.softmax(1))
        return torch.cat(feats), torch.cat(probs)

    def describe(self) -> dict[str, Any]:
        return {"extractor": f"genbench small classifier ({self.dataset})", "feature_dim": FEATURE_DIM,
                "weights_sha256": self.weights_sha256, "pinned": self.pinned,
                "test_accuracy": self.info.get("test_accuracy"), "recipe": self.info.get("recipe"),
                "label": "Fréchet distance in a small domain classifier's features: not FID"}


def build(datamodule: Any, path: Path, recipe: Recipe = RECIPE) -> dict[str, Any]:
    """Train the domain classifier of ``datamodule`` on its training split and write it atomically."""
    x, y = datamodule.split("train")
    tx, ty = datamodule.split("test")
    t0 = time.perf_counter()
    net = train_classifier(x, y, datamodule.num_levels, datamodule.num_classes, recipe)
    seconds = time.perf_counter() - t0
    info = {"dataset": datamodule.dataset, "recipe": asdict(recipe), "train_examples": len(x),
            "test_accuracy": accuracy(net, tx, ty, datamodule.num_levels), "torch": str(torch.__version__)}
    atomic_torch_save({"state_dict": net.state_dict(), "info": info}, path)  # same weights -> same bytes
    info = {**info, "train_seconds": seconds, "sha256": file_sha256(path)}
    atomic_write_text(Path(path).with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return info


def domain_metrics(samples: torch.Tensor, real: torch.Tensor, floor_real: torch.Tensor | None,
                   extractor: DomainExtractor) -> dict[str, Any]:
    """Domain FD of ``samples`` against ``real`` (and of ``floor_real`` against ``real``), class coverage."""
    f_s, p_s = extractor(samples)
    f_r, p_r = extractor(real)
    common = {"n": len(samples), "n_reference": len(real), **extractor.describe()}
    out: dict[str, Any] = {T.DOMAIN_FD: {"value": fid_from_features(f_s, f_r), **common}}
    if floor_real is not None and len(floor_real) >= 2:
        f_f, _ = extractor(floor_real)
        out[T.DOMAIN_FD_FLOOR] = {"value": fid_from_features(f_f, f_r), "n": len(floor_real), **common}
    k = extractor.num_classes
    hist_s = torch.bincount(p_s.argmax(1), minlength=k).double() / len(p_s)
    hist_r = torch.bincount(p_r.argmax(1), minlength=k).double() / len(p_r)
    covered = [c for c in range(k) if hist_r[c] > 0 and hist_s[c] >= 0.5 * hist_r[c]]
    out[T.CLASS_COVERAGE] = {
        "value": 0.5 * float((hist_s - hist_r).abs().sum()),  # total variation distance, lower is better
        "metric": "total variation between predicted-class histograms of samples and real images",
        "classes_covered": len(covered), "num_classes": k,
        "covered_rule": "a class receives at least half its share among the real images",
        "sample_histogram": [round(float(v), 4) for v in hist_s], "real_histogram": [round(float(v), 4) for v in hist_r],
        "mean_confidence": float(p_s.max(1).values.mean()), "real_mean_confidence": float(p_r.max(1).values.mean()),
        **common,
    }
    return out
