"""The restoration figure: one row per test image, columns y | A⁺y | DDNM | truth."""

from __future__ import annotations

from pathlib import Path

import torch

COLUMNS = (("y", "y (observed)"), ("pinv", "A⁺y"), ("ddnm", "DDNM"), ("truth", "truth"))
MISSING_RGB = (0.55, 0.0, 0.0)  # unobserved pixels of an inpainting y, so they differ from black ink


def _to_rgb01(x: torch.Tensor) -> torch.Tensor:
    x = ((x.to(torch.float32).clamp(-1.0, 1.0) + 1.0) / 2.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def save_restoration_figure(images: dict[str, torch.Tensor], path: Path, num_levels: int, title: str,
                            rows: int = 6) -> Path:
    """Write the figure atomically; ``images`` holds model-space ``y``/``pinv``/``ddnm``/``truth`` (and ``mask``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    from genbench.data.transforms import to_model_space, to_pixels

    k = min(rows, images["truth"].shape[0])
    cols = []
    for key, _ in COLUMNS:
        # what the metrics see: the restoration quantised to the data's grey levels
        x = to_model_space(to_pixels(images[key][:k], num_levels), num_levels) if key != "y" else images[key][:k]
        rgb = _to_rgb01(x)
        if key == "y" and "mask" in images:
            missing = images["mask"][:k].expand_as(rgb) < 0.5
            fill = torch.tensor(MISSING_RGB).view(1, 3, 1, 1).expand_as(rgb)
            rgb = torch.where(missing, fill, rgb)
        cols.append(rgb)
    tiles = torch.stack(cols, dim=1).flatten(0, 1)  # row-major: image i's four columns in a row
    grid = make_grid(tiles, nrow=len(COLUMNS), padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig = plt.figure(figsize=(3.2, 0.8 * k + 0.6), dpi=100)
    plt.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    width = grid.shape[-1] / len(COLUMNS)
    plt.xticks([width * (i + 0.5) for i in range(len(COLUMNS))], [c for _, c in COLUMNS], fontsize=7)
    plt.yticks([])
    plt.gca().xaxis.set_ticks_position("top")
    for side in plt.gca().spines.values():
        side.set_visible(False)
    plt.title(title, fontsize=6, pad=14)
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
