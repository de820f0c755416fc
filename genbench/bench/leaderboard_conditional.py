"""The leaderboard's class-conditional section of a dataset x profile: what conditioning promises, per model.

A row per class-conditional record (its latest one): bits/dim of p(x) and of p(x | y), the bits/dim the label
saves against its bound log2(K)/D, the domain classifier's agreement with the requested class, the per-class
Fréchet distance beside its real-vs-real floor, FID and class TV of the unlabelled samples. Below it: the
guidance trade-off of the models that sweep a guidance weight, per-class accuracy, and each model's samples
with one row per class.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from genbench.bench import plots
from genbench.bench.record import ResultRecord
from genbench.metrics import table as T

INTRO = ("Class-conditional variants (`make bench MODEL=<model> COND=1`), scored for what conditioning promises. "
         "*bits/dim | y*: -log2 p(x|y)/D of the same test images with their own labels; *bits/dim the label saves*: "
         "the mean per-image difference to the unconditional bits/dim, which cannot exceed log2(K)/D when p(x) is the "
         "marginal of p(x|y) (✓ within, ✗ beyond: then the two bounds are not one model's marginal and its "
         "conditional); *accuracy†*: share of samples drawn for class y that the domain classifier assigns to y "
         "(classes produced: at least half of their samples recognised); *per-class FD†*: Fréchet distance between "
         "the samples of a class and as many test images of it, averaged over classes, with the real-vs-real floor "
         "at that n. † = in the small domain classifier's features, not Inception.")

COLUMNS = ("model", T.BPD, T.BPD_CONDITIONAL, T.LABEL_INFORMATION, T.CONDITIONAL_ACCURACY, T.CLASS_FD, T.FID,
           T.CLASS_COVERAGE)
HEADERS = {"model": "model", T.BPD: "bits/dim ↓", T.BPD_CONDITIONAL: "bits/dim | y ↓",
           T.LABEL_INFORMATION: "bits/dim the label saves (bound)", T.CONDITIONAL_ACCURACY: "accuracy† ↑",
           T.CLASS_FD: "per-class FD† ↓ (floor)", T.FID: "FID ↓ (uniform labels)", T.CLASS_COVERAGE: "class TV† ↓"}


def conditional_records(records: list[ResultRecord]) -> dict[str, ResultRecord]:
    """The latest record of each class-conditional model."""
    latest = {}
    for r in sorted(records, key=lambda r: (r.model, r.created)):
        if (r.model_info or {}).get("class_conditional"):
            latest[r.model] = r
    return latest


def _num(m: Any) -> float | None:
    return m.get("value") if isinstance(m, dict) and isinstance(m.get("value"), (int, float)) else None


def _cell(r: ResultRecord, key: str) -> str:
    m = r.metrics.get(key)
    v = _num(m)
    if v is None:
        return "n/a (no density)" if isinstance(m, dict) and m.get("available") is False else "—"
    digits = T.METRICS[key].digits
    if key in (T.BPD, T.BPD_CONDITIONAL):
        return f"{v:.{digits}f} ± {m.get('stderr', 0.0):.{digits}f}"
    if key == T.LABEL_INFORMATION:
        mark = "✓" if m.get("within_bound") else "✗"
        return f"{v:+.4f} ± {m.get('stderr', 0.0):.4f} ({mark} ≤ {m.get('bound', float('nan')):.4f})"
    if key == T.CONDITIONAL_ACCURACY:
        return f"{v:.3f} ({m.get('classes_produced')}/{m.get('num_classes')} classes, n={m.get('n')})"
    if key == T.CLASS_FD:
        floor = m.get("floor")
        return f"{v:.1f} ({floor:.1f} @{m.get('n_per_class')}/class)" if isinstance(floor, (int, float)) else f"{v:.1f}"
    if key == T.FID:
        return f"{v:.1f} @{m.get('n')}"
    return f"{v:.{digits}f}"


def section(records: list[ResultRecord], results_dir: Path, stem: str) -> dict[str, Any] | None:
    """The rows, figures (PNG bytes) and per-class grids of one table's class-conditional records; None if none."""
    latest = conditional_records(records)
    if not latest:
        return None
    rows = [{c: (name if c == "model" else _cell(r, c)) for c in COLUMNS} for name, r in latest.items()]
    figures = []
    sweeps = {name: [p for p in r.metrics.get(T.GUIDANCE_SWEEP) or [] if isinstance(p, dict)]
              for name, r in latest.items()}
    sweeps = {k: v for k, v in sweeps.items() if v}
    if sweeps:
        n = next(p.get("n") for v in sweeps.values() for p in v)
        floor = next((_num(r.metrics.get(T.FID_FLOOR)) for r in latest.values() if _num(r.metrics.get(T.FID_FLOOR))), None)
        fig = plots.guidance_figure(sweeps, floor)
        figures.append({"name": f"{stem}-guidance", "png": plots.png_bytes(fig),
                        "caption": f"Classifier-free guidance: FID and accuracy† of {n} class-balanced samples per "
                                   "guidance weight w (same seed and labels at every w), and the trade-off between "
                                   "them (right, each point labelled by w). w = 0 samples the null-label model p(x), "
                                   "w = 1 the conditional model; larger w sharpens towards the class. FID at this n "
                                   "compares the points with each other, not with the table's FID."})
    per_class = {name: (r.metrics.get(T.CONDITIONAL_ACCURACY) or {}).get("per_class") for name, r in latest.items()}
    per_class = {k: v for k, v in per_class.items() if v}
    if per_class:
        k = len(next(iter(per_class.values())))
        figures.append({"name": f"{stem}-accuracy_per_class", "caption": "Accuracy† per requested class: the share "
                        "of a class's samples the domain classifier assigns to it (dashed: chance).",
                        "png": plots.png_bytes(plots.per_class_figure(per_class, "accuracy†", 1.0 / k))})
    grids = []
    for name, r in latest.items():
        rel = r.artifacts.get("class_grid")
        path = Path(results_dir) / rel if rel else None
        if path is not None and path.is_file():
            from PIL import Image

            with Image.open(path) as im:
                size = im.size
            acc = _num(r.metrics.get(T.CONDITIONAL_ACCURACY))
            grids.append({"name": f"{r.run_id}-classes", "label": name, "png": path.read_bytes(), "path": path,
                          "size": size, "pixel_exact": True,
                          "caption": "one row per class, class 0 at the top" + (f" · accuracy† {acc:.3f}" if acc is not None else "")})
    return {"rows": rows, "figures": figures, "grids": grids}


def _md(text: str) -> str:
    return text.replace("|", "\\|")  # a literal bar inside a markdown table cell


def markdown(sec: dict[str, Any], link: Any) -> list[str]:
    """Markdown lines of a section; ``link(entry, alt)`` gives an image link or None."""
    out = ["### Class-conditional", "", INTRO, "",
           "| " + " | ".join(_md(HEADERS[c]) for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_md(str(row[c])) for c in COLUMNS) + " |" for row in sec["rows"]]
    out.append("")
    grid_links = [(g, link(g, g["label"])) for g in sec["grids"]]
    grid_links = [(g, s) for g, s in grid_links if s]
    if grid_links:
        out += ["| " + " | ".join(g["label"] for g, _ in grid_links) + " |", "|" + "---|" * len(grid_links),
                "| " + " | ".join(s for _, s in grid_links) + " |",
                "| " + " | ".join(g["caption"] for g, _ in grid_links) + " |", ""]
    for f in sec["figures"]:
        s = link(f, f["name"])
        out += ([s, ""] if s else []) + [f"*{f['caption']}*", ""]
    return out


def html_section(sec: dict[str, Any], grid_html: Any) -> str:
    """HTML of a section; ``grid_html(entry)`` renders a sample grid the way the rest of the page does."""
    import base64

    heads = "".join(f"<th>{html.escape(HEADERS[c])}</th>" for c in COLUMNS)
    body = "".join("<tr class='genbench'>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in COLUMNS) + "</tr>"
                   for row in sec["rows"])
    intro = html.escape(INTRO.replace("*", "").replace("`", ""))
    parts = [f"<h3>Class-conditional</h3><p class='legend'>{intro}</p>",
             f"<div class='scroll'><table><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table></div>"]
    if sec["grids"]:
        parts.append("<div class='grids'>" + "".join(grid_html(g) for g in sec["grids"]) + "</div>")
    if sec["figures"]:
        parts.append("<div class='figs'>" + "".join(
            f"<figure id='{html.escape(f['name'], quote=True)}'><img src='data:image/png;base64,"
            f"{base64.b64encode(f['png']).decode()}' alt='{html.escape(f['name'], quote=True)}'><figcaption>"
            f"{html.escape(f['caption'])}</figcaption></figure>" for f in sec["figures"]) + "</div>")
    return "\n".join(parts)
