"""The leaderboard's restoration section: one table per restored checkpoint and the figure of each task.

Reads ``<results>/restoration/*.json`` (written by ``python -m genbench restore``); one row per task and
method, the best PSNR, SSIM and domain FD of each task in bold.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from genbench.restoration.run import METHODS

METHOD_LABELS = {"ddnm": "DDNM", "sampler_only": "sampler, no rectification", "pinv": "A⁺y", "classical": "classical"}
HEADERS = ("task", "σ_y", "method", "PSNR dB", "SSIM", "‖Ax̂−y‖ (float / pixels)", "domain FD† (floor)", "s/image")


def load(results_dir: Path) -> list[dict[str, Any]]:
    """Every readable restoration record, ordered by run and task; unreadable files are reported."""
    records = []
    for p in sorted((Path(results_dir) / "restoration").glob("*.json")):
        try:
            d = json.loads(p.read_text())
            if not isinstance(d, dict) or d.get("kind") != "restoration":
                raise ValueError("not a restoration record")
            records.append(d)
        except (OSError, ValueError) as err:
            print(f"genbench: skipping unreadable restoration record {p}: {err}")
    from genbench.restoration.operators import TASKS

    order = {name: i for i, name in enumerate(TASKS)}
    return sorted(records, key=lambda d: (d["run"], order.get(d["task"], len(order)), d["task"]))


def _groups(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in records:
        out.setdefault(d["run"], []).append(d)
    return out


def _rows(d: dict[str, Any]) -> list[list[str]]:
    methods = d["methods"]
    best = {k: (max if k in ("psnr_db", "ssim") else min)(methods[m][k] for m in METHODS) for k in ("psnr_db", "ssim", "domain_fd")}

    def fmt(m: str, key: str, spec: str) -> str:
        s = format(methods[m][key], spec)
        return f"**{s}**" if methods[m][key] == best[key] else s

    rows = []
    for m in METHODS:
        label = METHOD_LABELS[m] + (f" ({methods[m]['method']})" if m == "classical" else "")
        rows.append([d["task"], f"{d['sigma_y']:g}", label, fmt(m, "psnr_db", ".2f"), fmt(m, "ssim", ".3f"),
                     f"{methods[m]['consistency_l2']:.2g} / {methods[m]['consistency_l2_pixels']:.2g}",
                     f"{fmt(m, 'domain_fd', '.1f')} ({d['domain_fd_floor']:.1f})", f"{methods[m]['seconds_per_image']:.3g}"])
    return rows


def _caption(run: str, group: list[dict[str, Any]]) -> str:
    d = group[0]
    s = d["sampler"]
    eta = f", eta {s['eta']:g}" if s.get("eta") is not None else ""
    trained = (d["checkpoint"].get("trained_by") or [{}])[-1].get("commit", "unknown")[:7]
    return (f"{run}: n = {d['n']} test images per task, seed {d['seed']}, {s['name']} sampler, {s['steps']} steps{eta} "
            f"(network evaluations per image: {s['network_evaluations']}), checkpoint trained at {trained}, "
            f"{d['torch_threads']} torch thread(s). ‖Ax̂−y‖: mean L2 residual per image of the float restoration and "
            "of the quantised one (DDNM's float residual is asserted ≈ 0 for noise-free y). † domain FD: Fréchet "
            "distance in the small domain classifier's features against real test images disjoint from the "
            "restored ones, floor = the ground truth itself; not FID, biased by n. The sampler without "
            "rectification ignores y (the same images for every task).")


def restoration_markdown(results_dir: Path, out_dir: Path) -> str:
    """The section for leaderboard.md ("" when there is no restoration record)."""
    groups = _groups(load(results_dir))
    if not groups:
        return ""
    lines = ["", "## Restoration (zero-shot, DDNM)", ""]
    for run, group in groups.items():
        lines += [f"### {run}", "", _caption(run, group), "",
                  "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        for d in group:
            lines += ["| " + " | ".join(r) + " |" for r in _rows(d)]
        lines.append("")
        for d in group:
            fig = Path(results_dir) / "restoration" / d["figure"]
            if fig.is_file():
                lines.append(f"![{d['record_id']}]({os.path.relpath(fig, out_dir)})")
        lines.append("")
    return "\n".join(lines)


def restoration_html(results_dir: Path) -> str:
    """The section for leaderboard.html, figures inlined ("" when there is no restoration record)."""
    groups = _groups(load(results_dir))
    if not groups:
        return ""

    def cell(v: str) -> str:
        s = html.escape(v)
        return f"<b>{s[2:-2]}</b>" if s.startswith("**") and s.endswith("**") else s.replace("**", "")

    parts = ["<h2>Restoration (zero-shot, DDNM)</h2>"]
    for run, group in groups.items():
        parts.append(f"<h3>{html.escape(run)}</h3><p><small>{html.escape(_caption(run, group))}</small></p><table><tr>")
        parts.append("".join(f"<th>{html.escape(h)}</th>" for h in HEADERS) + "</tr>")
        for d in group:
            parts += ["<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in _rows(d)]
        parts.append("</table><div style='display:flex;flex-wrap:wrap'>")
        for d in group:
            fig = Path(results_dir) / "restoration" / d["figure"]
            if fig.is_file():
                b64 = base64.b64encode(fig.read_bytes()).decode()
                parts.append(f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{html.escape(d['task'])}"
                             "</figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts)
