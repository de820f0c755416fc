"""One Inception-v3 weights file: reading it safely, its content sha256, whether it has a classifier head, and
torch-fidelity's extractor built from it (shared by resolution, conversion and verification)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

EXTRACTOR_NAME = "inception-v3-compat"
FEATURE_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"
NUM_FEATURES = 2048
NUM_CLASSES_HEAD = 1008


class InceptionWeightsError(RuntimeError):
    """No usable Inception weights (or a weights file failed its checks)."""


@dataclass(frozen=True)
class WeightsInfo:
    """The weights file an extractor uses and how it was found (recorded with every sample metric)."""

    path: str
    source: str
    sha256: str
    has_logits: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file safely (``weights_only=True``) into a CPU state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise InceptionWeightsError(f"cannot read Inception weights {str(path)!r} as a state dict: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{str(path)!r} is not a state dict of tensors")
    return state


def content_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the floating-point tensors as float32, keys sorted (name, shape and bytes of each)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not torch.is_floating_point(t):
            continue
        h.update(key.encode())
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def has_logits_head(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the file carries a real (non-zero) 1008-class classifier, as Inception Score needs."""
    w = state_dict.get("fc.weight")
    return w is not None and tuple(w.shape) == (NUM_CLASSES_HEAD, NUM_FEATURES) and bool(w.abs().sum() > 0)


# ---------------------------------------------------------------------------------------------- extractor
def build_extractor(
    path: str | os.PathLike, features: tuple[str, ...] = (FEATURE_LAYER,), device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the weights at ``path`` (eval, no grad).

    The file is first read with ``weights_only=True`` (so it is known to hold tensors only) before
    torch-fidelity loads it, strictly, into its module.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    load_state_dict(path)  # safety and a clear error before torch-fidelity's own torch.load
    try:
        module = FeatureExtractorInceptionV3(EXTRACTOR_NAME, list(features), feature_extractor_weights_path=str(path))
    except RuntimeError as e:
        raise InceptionWeightsError(f"{str(path)!r} does not fit torch-fidelity's InceptionV3: {e}") from e
    return module.to(device).eval().requires_grad_(False)
