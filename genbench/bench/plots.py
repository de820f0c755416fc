"""Matplotlib / torchvision figures: sample grids and the leaderboard's plots."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def save_sample_grid(samples: torch.Tensor, path: Path, title: str | None = None, levels: int = 256) -> Path:
    """uint8 images -> a PNG grid; float32 2-D points -> a scatter plot. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if samples.dtype == torch.uint8:
        from torchvision.utils import make_grid

        nrow = int(math.ceil(math.sqrt(samples.shape[0])))
        grid = make_grid(samples.float() / (levels - 1), nrow=nrow, padding=1, pad_value=1.0)
        fig = plt.figure(figsize=(4, 4), dpi=100)
        plt.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    else:
        pts = samples.detach().cpu().numpy()
        fig = plt.figure(figsize=(4, 4), dpi=100)
        plt.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        plt.gca().set_aspect("equal")
    plt.axis("off")
    if title:
        plt.title(title, fontsize=9)
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
