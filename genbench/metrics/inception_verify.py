"""Checking an Inception weights file: it fits torch-fidelity's InceptionV3 exactly, and it reproduces the
printed outputs of torchmetrics 1.9.0's own FID/KID docstring examples (made with the canonical weights)::

    >>> from genbench.metrics.inception_verify import verify_weights
    >>> report = verify_weights("~/.cache/genbench/weights/pt_inception-2015-12-05-fid-helper.pth")
    >>> report["ok"], report["checks"]
    (True, {'kid_seed42': {...}, 'fid64_seed42': {...}})

Damaged or different weights miss these values by far more than their printed precision.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from genbench.metrics.inception import TORCH_FIDELITY_FILENAME
from genbench.metrics.inception_files import build_extractor, content_sha256, has_logits_head, load_state_dict

# torchmetrics 1.9.0 docstring examples (printed with the canonical TF-FID weights); see verify_weights.
REFERENCE_KID_SEED42 = (0.0312, 0.0025)
REFERENCE_FID64_SEED42 = 12.6388


@contextlib.contextmanager
def _hub_dir_holding(path: Path) -> Iterator[None]:
    """Temporarily point torch hub's cache at a directory whose checkpoint is ``path``."""
    previous_env = os.environ.get("TORCH_HOME")
    previous_dir = getattr(torch.hub, "_hub_dir", None)
    with tempfile.TemporaryDirectory() as home:
        ckpt = Path(home) / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        (ckpt / TORCH_FIDELITY_FILENAME).symlink_to(Path(path).resolve())
        os.environ["TORCH_HOME"] = home
        torch.hub.set_dir(str(Path(home) / "hub"))
        try:
            yield
        finally:
            if previous_env is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = previous_env
            torch.hub._hub_dir = previous_dir  # restore exactly (None = follow TORCH_HOME again)


def torchmetrics_reference_examples(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Re-run torchmetrics 1.9.0's FID/KID docstring examples with the weights at ``path``.

    The examples seed torch with 42 before building the metric (its module initialisation draws from the
    generator, as in the doctest run), then draw ``randint(0, 200)`` real and ``randint(100, 255)`` fake
    images ``[100, 3, 299, 299]``. Their printed values come from the canonical weights: KID =
    0.0312 +- 0.0025 (2048 features, subset_size 50) and FID = 12.6388 (64 features).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    path = Path(path).expanduser()
    load_state_dict(path)
    out: dict[str, dict[str, Any]] = {}
    with _hub_dir_holding(path), torch.no_grad():
        torch.manual_seed(42)
        kid = KernelInceptionDistance(subset_size=50)
        real = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
        fake = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        kid_mean, kid_std = (float(v) for v in kid.compute())
        out["kid_seed42"] = {"value": [round(kid_mean, 4), round(kid_std, 4)], "expected": list(REFERENCE_KID_SEED42),
                             "ok": (round(kid_mean, 4), round(kid_std, 4)) == REFERENCE_KID_SEED42}
        torch.manual_seed(42)
        fid = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=str(path))
        real = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
        fake = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        fid_value = float(fid.compute())
        out["fid64_seed42"] = {"value": round(fid_value, 4), "expected": REFERENCE_FID64_SEED42,
                               "ok": round(fid_value, 4) == REFERENCE_FID64_SEED42}
    return out


def verify_weights(path: str | os.PathLike, reference_examples: bool = True) -> dict[str, Any]:
    """Check an Inception weights file; returns a JSON-serialisable report with ``ok``.

    Loads it with ``weights_only=True``, builds torch-fidelity's InceptionV3 from it (strict key/shape
    match), records its content sha256 and whether it has a classifier head, and, with
    ``reference_examples``, reproduces torchmetrics' docstring FID/KID values (see
    :func:`torchmetrics_reference_examples`).
    """
    path = Path(path).expanduser()
    state = load_state_dict(path)
    build_extractor(path)
    report: dict[str, Any] = {"path": str(path), "sha256": content_sha256(state),
                              "has_logits": has_logits_head(state), "loads_into_torch_fidelity": True}
    if reference_examples:
        report["checks"] = torchmetrics_reference_examples(path)
        report["ok"] = all(c["ok"] for c in report["checks"].values())
    else:
        report["ok"] = True
    return report
