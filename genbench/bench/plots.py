"""Sample grids (torchvision, pixel-exact) and the leaderboard's figures (matplotlib).

The figure functions take plain data (lists and dicts of numbers, not result records), so the leaderboard
and W&B draw from the same inputs; each returns a matplotlib ``Figure`` (or None when there is nothing
to draw), and :func:`png_bytes` turns one into a PNG.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch

GRID_PADDING = 1  # pixels of white between the tiles of a sample grid
GRID_IMAGES = 64  # images in the final sample grid of a run and in the leaderboard's real-data grid
MARKER = dict(marker="o", markersize=4)  # every line carries markers: a one-point curve stays visible


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_nrow(n: int) -> int:
    return int(math.ceil(math.sqrt(n)))


def save_sample_grid(samples: torch.Tensor, path: Path, title: str | None = None, levels: int = 256,
                     nrow: int | None = None) -> Path:
    """uint8 images -> a pixel-exact PNG grid (one PNG pixel per image pixel, ``GRID_PADDING`` white pixels
    between tiles, via torchvision's ``save_image``); float32 2-D points -> a scatter plot titled ``title``.
    ``nrow`` images per row (default: a square grid). Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if samples.dtype == torch.uint8:
        from torchvision.utils import save_image

        # grey levels 0..levels-1 -> [0, 1]; save_image maps back to 0..255 with rounding
        save_image(samples.float() / (levels - 1), tmp, nrow=nrow or grid_nrow(samples.shape[0]), padding=GRID_PADDING,
                   pad_value=1.0)
    else:
        plt = _pyplot()
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


def is_pixel_exact_grid(size_wh: tuple[int, int], image_hw: tuple[int, int], n: int = GRID_IMAGES,
                        padding: int = GRID_PADDING) -> bool:
    """Whether a PNG of ``size_wh`` is a :func:`save_sample_grid` grid of ``n`` images of ``image_hw``
    (grids written by older versions were resampled matplotlib figures)."""
    nrow = grid_nrow(n)
    rows = int(math.ceil(n / nrow))
    h, w = image_hw
    return tuple(size_wh) == (nrow * (w + padding) + padding, rows * (h + padding) + padding)


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (the figure is closed)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _plain(value: float, _pos: Any = None) -> str:
    """Tick labels as plain numbers (0.002, 50), never 2×10⁻³."""
    return f"{value:g}"


def _plain_log_axis(ax: Any, ticks: list[float] | None = None, span: tuple[float, float] | None = None) -> None:
    """Log-scale x with plain labels: at ``ticks`` when given; else at each decade, or at 1, 2 and 5 of each
    decade when the data ``span`` (min, max) covers less than two decades (too few decades to read)."""
    from matplotlib import ticker

    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    else:
        narrow = span is not None and span[0] > 0 and span[1] / span[0] < 100
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _reference_line(ax: Any, value: float | None, label: str, horizontal: bool = True, color: str = "0.35") -> None:
    if value is None:
        return
    line = ax.axhline if horizontal else ax.axvline
    line(value, color=color, linestyle="--", linewidth=1, label=label)


def quality_vs_compute_figure(curves: dict[str, list[dict[str, Any]]], panels: list[tuple[str, str]],
                              references: dict[str, tuple[float, str]] | None = None) -> Any:
    """One panel per ``(curve key, title)`` of ``panels``: its value against training PFLOP (log x), one line
    per label of ``curves`` (points with ``train_flops``); ``references`` maps a key to a dashed line."""
    references = references or {}
    keys = [(k, t) for k, t in panels if any(p.get(k) is not None for pts in curves.values() for p in pts)]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.3), squeeze=False)
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        for label, pts in sorted(curves.items()):
            xy = [(p["train_flops"] / 1e15, p[key]) for p in pts if p.get(key) is not None and p.get("train_flops")]
            if xy:
                ax.plot(*zip(*xy, strict=True), label=label, **MARKER)
        if key in references:
            _reference_line(ax, references[key][0], references[key][1])
        ax.set_title(title, fontsize=9)
        xs = [p["train_flops"] / 1e15 for pts in curves.values() for p in pts if p.get("train_flops")]
        _plain_log_axis(ax, span=(min(xs), max(xs)))
        ax.set_xlabel("training PFLOP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def bpd_fid_figure(points: list[tuple[str, float | None, float]], baseline_bpd: float | None,
                   floor_fid: float | None, floor_label: str = "real vs real") -> Any:
    """FID against bits/dim, one labelled point per model; a model without a density is a dotted line at its
    FID. Dashed reference lines: the per-pixel histogram's bits/dim and the real-vs-real FID floor."""
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.8), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, bpd, fid) in enumerate(points):
        color = colors[i % len(colors)]
        if bpd is None:
            ax.axhline(fid, color=color, linestyle=":", linewidth=1.5, label=f"{label} (no density)")
        else:
            ax.plot([bpd], [fid], color=color, linestyle="none", label=label, **{**MARKER, "markersize": 7})
            ax.annotate(label, (bpd, fid), textcoords="offset points", xytext=(5, 4), fontsize=8)
    _reference_line(ax, baseline_bpd, f"per-pixel histogram {baseline_bpd:.3f} bits/dim" if baseline_bpd else "",
                    horizontal=False, color="tab:gray")
    _reference_line(ax, floor_fid, f"{floor_label} FID {floor_fid:.1f}" if floor_fid is not None else "",
                    color="black")
    ax.set_xlabel("bits/dim (lower is better)")
    ax.set_ylabel("FID (lower is better)")
    ax.margins(x=0.15, y=0.12)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper")
    return fig


def fid_vs_steps_figure(sweeps: dict[str, list[tuple[int, float]]], floor_fid: float | None) -> Any:
    """FID against the number of sampler steps (log x, ticks at the steps measured), one line per model."""
    sweeps = {k: v for k, v in sweeps.items() if v}
    if not sweeps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for label, pts in sorted(sweeps.items()):
        steps, fids = zip(*sorted(pts), strict=True)
        ax.plot(steps, fids, label=label, **MARKER)
    _reference_line(ax, floor_fid, f"real vs real {floor_fid:.1f}" if floor_fid is not None else "", color="black")
    _plain_log_axis(ax, ticks=sorted({s for pts in sweeps.values() for s, _ in pts}))
    ax.set_xlabel("sampler steps (network evaluations)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def guidance_figure(sweeps: dict[str, list[dict[str, Any]]], floor_fid: float | None = None) -> Any:
    """Classifier-free guidance, one line per model: FID and conditional accuracy against the guidance weight,
    and the trade-off FID against accuracy with each point labelled by its weight. ``sweeps[label]`` holds the
    ``guidance_sweep`` points (``scale``, ``accuracy``, ``fid`` or ``domain_fd``)."""
    sweeps = {k: sorted(v, key=lambda p: p["scale"]) for k, v in sweeps.items() if v}
    if not sweeps:
        return None
    fid_key = "fid" if all(p.get("fid") is not None for v in sweeps.values() for p in v) else "domain_fd"
    fid_label = "FID" if fid_key == "fid" else "FD classifier†"
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.5))
    for label, pts in sorted(sweeps.items()):
        w = [p["scale"] for p in pts]
        fid = [p.get(fid_key) for p in pts]
        acc = [p.get("accuracy") for p in pts]
        axes[0].plot(w, fid, label=label, **MARKER)
        axes[1].plot(w, acc, label=label, **MARKER)
        axes[2].plot(acc, fid, label=label, **MARKER)
        for wi, a, f in zip(w, acc, fid, strict=True):
            axes[2].annotate(f"w={wi:g}", (a, f), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if fid_key == "fid" and floor_fid is not None:
        _reference_line(axes[0], floor_fid, f"real vs real {floor_fid:.1f} (other n)", color="black")
    axes[0].set(xlabel="guidance weight w (0: p(x), 1: p(x | y))", ylabel=f"{fid_label} (lower is better)")
    axes[1].set(xlabel="guidance weight w", ylabel="accuracy† (higher is better)", ylim=(0, 1.02))
    axes[2].set(xlabel="accuracy† (classifier agrees with the requested class)",
                ylabel=f"{fid_label} (lower is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def per_class_figure(values: dict[str, list[float | None]], ylabel: str, chance: float | None = None) -> Any:
    """Grouped bars: one group per class, one bar per model (``values[label]`` = per-class values)."""
    values = {k: v for k, v in values.items() if v}
    if not values:
        return None
    plt = _pyplot()
    k = max(len(v) for v in values.values())
    width = 0.8 / len(values)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * k * len(values) ** 0.5 + 2), 3.2))
    for i, (label, v) in enumerate(sorted(values.items())):
        xs = [c - 0.4 + width * (i + 0.5) for c in range(len(v))]
        ax.bar(xs, [0.0 if x is None else x for x in v], width=width, label=label)
    if chance is not None:
        _reference_line(ax, chance, f"chance {chance:.2f}", color="0.35")
    ax.set_xticks(range(k))
    ax.set_xlabel("requested class")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def class_coverage_figure(histograms: dict[str, dict[str, Any]]) -> Any:
    """One panel per model: the share of its samples the domain classifier assigns to each class (bars)
    beside the share among real images (outlined bars). ``histograms[label]`` has ``sample``, ``real``,
    and optionally ``title``."""
    if not histograms:
        return None
    plt = _pyplot()
    n = len(histograms)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 2.9), squeeze=False, sharey=True)
    for ax, (label, h) in zip(axes[0], sorted(histograms.items()), strict=True):
        classes = list(range(len(h["sample"])))
        ax.bar([c - 0.2 for c in classes], h["sample"], width=0.4, label="samples", color="tab:blue")
        ax.bar([c + 0.2 for c in classes], h["real"], width=0.4, label="real", facecolor="none",
               edgecolor="black", linewidth=0.8)
        ax.set_xticks(classes)
        ax.set_title(h.get("title", label), fontsize=9)
        ax.set_xlabel("predicted class")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("share of images")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_curves_figure(curves: dict[str, dict[str, list[list[float]]]], shared: tuple[str, ...] = ("val/bpd",)
                           ) -> Any:
    """Training curves with markers. A model's own objective (``train/loss``, ``val/loss``: GAN loss, DDPM
    MSE, VAE ELBO) gets a panel per model; keys in ``shared`` are comparable across models and share one
    panel each."""
    models = sorted(m for m, c in curves.items() if any(k not in shared and v for k, v in c.items()))
    shared_keys = [k for k in shared if any(c.get(k) for c in curves.values())]
    n = len(models) + len(shared_keys)
    if n == 0:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.0), squeeze=False)
    panels = list(axes[0])
    for ax, model in zip(panels, models, strict=False):
        for key, pts in sorted(curves[model].items()):
            if key in shared or not pts:
                continue
            steps, vals = zip(*pts, strict=True)
            ax.plot(steps, vals, label=key, **{**MARKER, "markersize": 2.5})
        ax.set_title(f"{model}: its own loss", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax, key in zip(panels[len(models):], shared_keys, strict=True):
        for model, c in sorted(curves.items()):
            if c.get(key):
                steps, vals = zip(*c[key], strict=True)
                ax.plot(steps, vals, label=model, **{**MARKER, "markersize": 2.5})
        ax.set_title(f"{key} (all models)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
