"""``python -m genbench leaderboard``: result records -> ``benchmarks/leaderboard.md`` and ``.html``.

One table per dataset x profile. genbench's rows aggregate the records of one model over seeds (mean, and
std when there are several seeds; one seed = its latest record), so reruns never duplicate a row. Beside
them: the real-vs-real FID floor at the same n, the per-pixel histogram bits/dim baseline computed from
the data, and published reference rows from ``configs/reference.yaml``, each marked as such.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from genbench import paths
from genbench.bench.record import ResultRecord, atomic_write_text, load_records
from genbench.io import file_lock
from genbench.metrics import table as T
from genbench.restoration.report import restoration_html, restoration_markdown

REPO_ROOT = Path(__file__).resolve().parents[2]
_BOARD = T.leaderboard_metrics()
LOWER_IS_BETTER = {m.key: m.lower_is_better for m in _BOARD}
DIGITS = {m.key: m.digits for m in _BOARD}
COLUMNS = ["source", "family", "model", *DIGITS, "params", "train_time", "train_pflop", "train_images_per_s",
           "sample_images_per_s", "seeds"]
HEADERS = {"source": "", "family": "family", "model": "model", **{m.key: m.label for m in _BOARD},
           "params": "params", "train_time": "train time", "train_pflop": "train PFLOP",
           "train_images_per_s": "train img/s", "sample_images_per_s": "sample img/s", "seeds": "seeds"}


def _value(record: ResultRecord, key: str) -> float | None:
    m = record.metrics.get(key)
    if isinstance(m, dict) and isinstance(m.get("value"), (int, float)) and m.get("available", True):
        return float(m["value"])
    return None


def _compute(record: ResultRecord, key: str) -> Any:
    return (record.compute.get("training") or {}).get(key)


def _truncated(records: list[ResultRecord]) -> list[str]:
    """Why any of ``records`` stopped before its budget (empty when every one completed it)."""
    return sorted({str(_compute(r, "stopped_by")) for r in records if _compute(r, "truncated")})


def _agg(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, std


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    s = f"{mean:.{digits}f}"
    return s + (f" ± {std:.{digits}f}" if std is not None else "")


def _fmt_params(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _fmt_count(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e4 else f"{n:.0f}"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"


def bpd_kind(m: dict[str, Any]) -> str:
    """``bound`` or ``exact`` for a bits/dim entry. A record written before flows on images were labelled
    says ``exact`` beside a uniform ``dequantization``: that number is a bound on the discrete data too."""
    kind = str(m.get("kind", "?"))
    return "bound" if kind == "exact" and "dequantization" in m else kind


def _bpd_estimator(m: dict[str, Any]) -> str:
    if "dequantization" in m:
        draws = m.get("draws", 1)
        return f"uniform dequantization, {draws} draw{'s' if draws != 1 else ''}"
    est = m.get("estimator")
    k = m.get("K", m.get("k"))
    return f"{est}, K={k}" if est and k else str(est or "")


def _bpd_detail(m: dict[str, Any]) -> str:
    """What follows a bits/dim value: its standard error over the n test images, n, and what it bounds."""
    se, n = m.get("stderr"), m.get("n")
    se_text = f"se {se:.3f}, " if isinstance(se, (int, float)) else ""
    est = _bpd_estimator(m)
    return f" ({se_text}n={n}; {bpd_kind(m)}{': ' + est if est else ''})"


def extractor_flags(records: list[ResultRecord]) -> dict[str, str]:
    """Model -> a warning for the FID cell, when the table's FIDs come from Inception weights of different
    content sha256 (such FIDs are not comparable); empty when they all agree."""
    shas: dict[str, set[str]] = defaultdict(set)
    for r in records:
        m = r.metrics.get(T.FID)
        if isinstance(m, dict) and m.get("value") is not None:
            shas[r.model].add(str(m.get("weights_sha256")))
    if len(set().union(*shas.values()) if shas else set()) <= 1:
        return {}
    return {model: " ⚠ extractor " + "/".join(sorted(s[:8] for s in found)) for model, found in shas.items()}


def extraction_flag(rate: float, m: dict[str, Any]) -> str:
    """The extraction-rate cell's suffix: n, and a warning when the row copies its training data."""
    limit = m.get("not_generalising_above", 0.05)
    warn = " ⚠ copies training data: not generalising" if rate > limit else ""
    return f" (n={m.get('n')}, k={m.get('k')}){warn}"


def table_rows(records: list[ResultRecord]) -> list[dict[str, Any]]:
    """genbench's rows for one dataset x profile: one per model, aggregated over seeds."""
    flags = extractor_flags(records)
    by_model: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in records:
        by_model[r.model].append(r)
    rows = []
    for model, recs in sorted(by_model.items()):
        first = recs[0]
        truncated = _truncated(recs)
        row: dict[str, Any] = {"source": "genbench", "family": first.family, "model": model,
                               "seeds": len(recs), "_num": {}, "_truncated": bool(truncated)}
        if truncated:  # stopped before its budget: shown, flagged, never marked best
            row["model"] = f"{model} ⚠ truncated ({', '.join(truncated)})"
        for key in DIGITS:
            mean, std = _agg([_value(r, key) for r in recs])
            row["_num"][key] = mean
            text = _fmt(mean, std, DIGITS[key])
            m = first.metrics.get(key, {})
            if key == T.BPD and mean is not None:
                text += _bpd_detail(m)
            if key == T.FID and mean is not None:
                text += f" @{m.get('n')} vs {m.get('reference_split')}" + flags.get(model, "")
            if key == T.CLASS_COVERAGE and mean is not None:
                text += f" ({m.get('classes_covered')}/{m.get('num_classes')} classes)"
            if key == T.EXTRACTION_RATE and mean is not None:
                text += extraction_flag(mean, m)
            if key == T.BPD and m.get("available") is False:
                text = "n/a (no density)"
            row[key] = text
        row["params"] = _fmt_params(first.params)
        row["train_time"] = _fmt_time(_agg([r.train.get("wall_time_s") for r in recs])[0])
        pflop = _agg([_compute(r, "train_pflop") for r in recs])[0]
        images = _agg([_compute(r, "images_seen") for r in recs])[0]
        row["train_pflop"] = "—" if pflop is None else f"{pflop:.3g} ({_fmt_count(images)} img)"
        row["train_images_per_s"] = _fmt(*_agg([r.train.get("images_per_s") for r in recs]), 1)
        row["sample_images_per_s"] = _fmt(*_agg([(r.metrics.get(T.SAMPLING) or {}).get("images_per_s") for r in recs]), 1)
        rows.append(row)
    return rows


def _mark_best(rows: list[dict[str, Any]]) -> None:
    for key, lower in LOWER_IS_BETTER.items():
        vals = [(r["_num"][key], i) for i, r in enumerate(rows)
                if r["_num"].get(key) is not None and not r.get("_truncated")]
        if len(vals) < 2:
            continue
        best = (min if lower else max)(vals)[1]
        rows[best][key] = f"**{rows[best][key]}**"


def reference_rows(dataset: str, reference_file: Path) -> list[dict[str, Any]]:
    if not reference_file.is_file():
        return []
    rows = []
    for ref in yaml.safe_load(reference_file.read_text()) or []:
        if ref.get("dataset") != dataset:
            continue
        bpd = f"{ref[T.BPD]:.2f} ({ref.get('bpd_kind', '?')})" if T.BPD in ref else "—"
        fid = f"{ref[T.FID]:.2f}" if T.FID in ref else "—"
        rows.append({"source": "published", "family": ref.get("family", ""), "model": ref["model"], T.BPD: bpd,
                     T.FID: fid, T.KID: "—", T.PRECISION: "—", T.RECALL: "—", "params": "—", "train_time": "—",
                     "train_images_per_s": "—", "sample_images_per_s": "—", "seeds": "—",
                     "_note": f"{ref.get('citation', '')}; {ref.get('protocol', '')}"})
    return rows


def baseline_rows(dataset: str, records: list[ResultRecord]) -> list[dict[str, Any]]:
    """The real-vs-real FID floor (from the records) and the per-pixel histogram bpd (from the data)."""
    rows = []
    floors = [r.metrics.get(T.FID_FLOOR) for r in records if isinstance(r.metrics.get(T.FID_FLOOR), dict)]
    floors = [f for f in floors if isinstance(f.get("value"), (int, float))]
    if floors:
        f = floors[-1]
        rows.append({"source": "floor", "family": "real data", "model": f"real vs real ({f.get('protocol', '')})",
                     T.BPD: "—", T.FID: f"{f['value']:.1f} @{f.get('n')}", T.KID: _fmt(f["kid"], f.get("kid_std"), 4)
                     if isinstance(f.get("kid"), (int, float)) else "—", T.PRECISION: "—", T.RECALL: "—",
                     "params": "—", "train_time": "—", "train_images_per_s": "—", "sample_images_per_s": "—",
                     "seeds": "—"})
        dom = [r.metrics.get(T.DOMAIN_FD_FLOOR) for r in records if isinstance(r.metrics.get(T.DOMAIN_FD_FLOOR), dict)]
        dom = [d for d in dom if isinstance(d.get("value"), (int, float))]
        if dom:
            rows[-1][T.DOMAIN_FD] = f"{dom[-1]['value']:.1f} @{dom[-1].get('n')}"
    hist = _pixel_histogram(dataset)
    if hist is not None:
        rows.append({"source": "baseline", "family": "—", "model": "per-pixel histogram (fit on train)",
                     T.BPD: f"{hist:.3f} (exact)", T.FID: "—", T.KID: "—", T.PRECISION: "—", T.RECALL: "—",
                     "params": "—", "train_time": "—", "train_images_per_s": "—", "sample_images_per_s": "—",
                     "seeds": "—"})
    return rows


def _pixel_histogram(dataset: str) -> float | None:
    try:
        import torch

        from genbench.data import GenDataModule
        from genbench.metrics.baselines import pixel_histogram_bpd

        dm = GenDataModule(dataset)
        if dm.is_continuous:
            return None
        dm.prepare_data()
        dm.setup()
        train = torch.cat([dm.split("train")[0], dm.split("val")[0]])
        return pixel_histogram_bpd(train, dm.split("test")[0], dm.num_levels)
    except Exception:  # a dataset without an offline source simply has no baseline row
        return None


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "—")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def build_tables(results_dir: Path, reference_file: Path) -> list[dict[str, Any]]:
    records = load_records(results_dir)
    groups: dict[tuple[str, str], list[ResultRecord]] = defaultdict(list)
    for r in records:
        groups[(r.dataset, r.profile)].append(r)
    tables = []
    for (dataset, profile), recs in sorted(groups.items()):
        ours = table_rows(recs)
        _mark_best(ours)
        tables.append({"dataset": dataset, "profile": profile, "records": recs, "ours": ours,
                       "baselines": baseline_rows(dataset, recs), "references": reference_rows(dataset, reference_file)})
    return tables


def render_markdown(tables: list[dict[str, Any]]) -> str:
    out = ["# genbench leaderboard", "",
           "Generated by `make leaderboard` from `benchmarks/results/*.json`. Rows marked *genbench* are this "
           "project's runs (mean ± std over seeds where there are several; otherwise the latest record of the "
           "one seed). FID/KID are only comparable at equal n and reference split; *floor* is real-vs-real "
           "at the same n; *baseline* is an independent per-pixel categorical fitted on the training split; "
           "*published* rows are quoted from the papers (see the notes) under their own protocols. "
           "Bits/dim: upper bounds on the discrete NLL where marked `bound` (every model scored here; the "
           "histogram baseline is exact), with the standard error over the n test images scored (se) and n; "
           "the nats they come from are in the notes below each table. **Bold** = best genbench value in the "
           "table.", ""]
    for t in tables:
        out += [f"## {t['dataset']} — profile `{t['profile']}`", "",
                _markdown_table(t["ours"] + t["baselines"] + t["references"]), ""]
        notes = [f"- {r['model']}: {r['_note']}" for r in t["references"]]
        protos = sorted({f"{r.model}: sampler {r.metrics.get('sampling', {}).get('sampler', 'n/a')}, "
                         f"steps {r.metrics.get('sampling', {}).get('steps', 'n/a')}" for r in t["records"]
                         if r.metrics.get(T.SAMPLING, {}).get("sampler")})
        if protos:
            out += ["Samplers: " + "; ".join(protos), ""]
        if notes:
            out += ["Published rows:", *notes, ""]
        domain = _domain_note(t["records"])
        if domain:
            out += [domain, ""]
        for note in (_likelihood_note(t["records"]), _provenance_note(t["records"]), _compute_note(t["records"])):
            if note:
                out += [note, ""]
    return "\n".join(out) + "\n"


def _compute_note(records: list[ResultRecord]) -> str:
    """Training budget and compute, and the sampling cost per image, of each model (latest record)."""
    latest = {r.model: r for r in records}
    parts = []
    for model, r in sorted(latest.items()):
        train, sampling = r.compute.get("training") or {}, r.compute.get("sampling") or {}
        if not train:
            continue
        text = f"{model}: {train.get('images_seen')} training images"
        if train.get("budget_train_images"):
            text += f" of a {train['budget_train_images']} budget"
        if train.get("train_flops_per_image"):
            text += f", {train['train_flops_per_image'] / 1e9:.3g} GFLOP/image"
        if sampling.get("flops_per_image"):
            text += f"; sampling {sampling['flops_per_image'] / 1e9:.3g} GFLOP/image"
            if sampling.get("network_evaluations_per_image"):
                text += f" ({sampling['network_evaluations_per_image']} network evaluations)"
        parts.append(text)
    if not parts:
        return ""
    return ("Compute (FLOPs counted by torch.utils.flop_counter: matmul/convolution/attention only, "
            "forward + backward of every player per training image): " + "; ".join(parts) + ".")


def _latest(records: list[ResultRecord]) -> dict[str, ResultRecord]:
    """The latest record of each model (the one whose descriptions the table's row shows)."""
    return {r.model: r for r in sorted(records, key=lambda r: (r.model, r.created))}


def _likelihood_note(records: list[ResultRecord]) -> str:
    """Nats beside bits for every bits/dim entry, their subsets, and a warning when the subsets differ."""
    parts, subsets = [], set()
    for model, r in sorted(_latest(records).items()):
        for key, m in sorted(r.metrics.items()):
            if not (key == T.BPD or key.startswith(T.BPD_VARIANT_PREFIX)) or not isinstance(m, dict):
                continue
            if not isinstance(m.get("value"), (int, float)):
                continue
            subsets.add(m.get("subset"))
            name = model if key == T.BPD else f"{model} {key}"
            k = m.get("K") if key != T.BPD else None
            name += f" (K={k})" if k else ""
            if isinstance(m.get("nll_nats"), (int, float)):
                se = m.get("nll_nats_stderr")
                nats = f"{m['nll_nats']:.1f}" + (f" ± {se:.1f}" if isinstance(se, (int, float)) else "")
                parts.append(f"{name}: {nats} nats per image over D={m.get('num_dims')} = {m['value']:.3f} bits/dim "
                             f"on {m.get('subset')}")
            else:  # a record written before nats were stored beside bits
                parts.append(f"{name}: {m['value']:.3f} bits/dim on {m.get('subset')} (nats not recorded)")
    if not parts:
        return ""
    note = "Likelihoods (bits/dim = nats / (D ln 2)): " + "; ".join(parts) + "."
    if len(subsets) > 1:
        note += (" **The bits/dim rows are scored on different test subsets "
                 f"({', '.join(sorted(str(s) for s in subsets))}): compare them only at equal n.**")
    return note


def _provenance_note(records: list[ResultRecord]) -> str:
    """The commit (and config hash) that trained each row's weights, beside the one that evaluated them."""
    parts = []
    for model, r in sorted(_latest(records).items()):
        trained = r.train.get("trained_at_commit")
        evaluated = ((r.environment.get("git") or {}).get("sha") or "?")[:12]
        if trained:
            dirty = " (modified)" if r.train.get("trained_at_dirty") else ""
            parts.append(f"{model} trained at {trained[:12]}{dirty}, config sha256 "
                         f"{str(r.train.get('config_sha256'))[:12]}…, evaluated at {evaluated}")
        else:
            parts.append(f"{model} trained at: not recorded, evaluated at {evaluated}")
    return "Weights: " + "; ".join(parts) + "." if parts else ""


def _domain_note(records: list[ResultRecord]) -> str:
    """The footnote that labels the † columns: which classifier, its weights' sha256 and accuracy."""
    for r in reversed(records):
        m = r.metrics.get(T.DOMAIN_FD)
        if isinstance(m, dict) and m.get("value") is not None:
            acc = m.get("test_accuracy")
            acc_text = f", test accuracy {100 * acc:.1f}%" if isinstance(acc, (int, float)) else ""
            return (f"† Domain metrics, not FID: Fréchet distance in the 128-d features of {m.get('extractor')} "
                    f"(weights sha256 {str(m.get('weights_sha256'))[:12]}…{acc_text}) at n={m.get('n')}, and the "
                    "total-variation distance between its predicted-class histograms of samples and real images "
                    "(classes receiving at least half their real share in brackets).")
    return ""


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(table: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    recs = table["records"]
    pts = [(r.family, r.model, _value(r, T.BPD), _value(r, T.FID)) for r in recs]
    pts = [p for p in pts if p[2] is not None and p[3] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for fam, model, b, f in pts:
            ax.scatter(b, f, label=f"{model} ({fam})")
        ax.set_xlabel("bits/dim (lower is better)")
        ax.set_ylabel("FID (lower is better)")
        ax.legend(fontsize=7)
        plots.append(("bits/dim against FID by family", _png_b64(fig)))
        plt.close(fig)
    curves = [(r.model, r.train.get("curves", {})) for r in recs if r.train.get("curves")]
    if curves:
        keys = sorted({k for _, c in curves for k in c})
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            for model, c in curves:
                if key in c and c[key]:
                    steps, vals = zip(*c[key], strict=True)
                    ax.plot(steps, vals, label=model)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        plots.append(("training curves", _png_b64(fig)))
        plt.close(fig)
    fig = _quality_vs_compute_figure(recs, plt)
    if fig is not None:
        plots.append(("quality against training compute (log PFLOP), measured during training", _png_b64(fig)))
        plt.close(fig)
    sweeps = [(r.model, r.metrics.get(T.FID_VS_STEPS)) for r in recs if r.metrics.get(T.FID_VS_STEPS)]
    if sweeps:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        for model, sweep in sweeps:
            ax.plot([s["steps"] for s in sweep], [s[T.FID] for s in sweep], marker="o", label=model)
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps")
        ax.set_ylabel("FID")
        ax.legend(fontsize=7)
        plots.append(("DDPM FID against sampler steps", _png_b64(fig)))
        plt.close(fig)
    return plots


CURVE_METRICS = {m.curve_key: m.curve_label for m in T.curve_metrics() if m.curve_label}


def _quality_vs_compute_figure(records: list[ResultRecord], plt: Any) -> Any:
    """One panel per curve metric: its value against training PFLOP (log x), one line per model."""
    curves = {}
    for r in records:
        pts = [p for p in r.train.get("quality_curve", []) if p.get("train_flops")]
        if pts:
            curves[f"{r.model} ({r.family})"] = pts
    keys = [k for k in CURVE_METRICS if any(p.get(k) is not None for pts in curves.values() for p in pts)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for label, pts in sorted(curves.items()):
            xy = [(p["train_flops"] / 1e15, p[key]) for p in pts if p.get(key) is not None]
            if xy:
                ax.plot(*zip(*xy, strict=True), marker="o", label=label)
        n = next((p.get("n_likelihood" if key == T.BPD else "n_samples") for pts in curves.values() for p in pts), None)
        ax.set_title(f"{CURVE_METRICS[key]}" + (f" @{n}" if n else ""), fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("training PFLOP")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def render_html(tables: list[dict[str, Any]], results_dir: Path) -> str:
    def cell(v: Any) -> str:
        s = html.escape(str(v))
        if s.startswith("**") and s.endswith("**"):
            return f"<b>{s[2:-2]}</b>"
        return s

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>genbench leaderboard</title><style>"
             "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}tr.published{color:#666;font-style:italic}"
             "tr.floor,tr.baseline{background:#f4f4f4}.grids img{width:220px;margin:4px}</style></head><body>",
             "<h1>genbench leaderboard</h1><p>From <code>benchmarks/results/*.json</code>. genbench rows: mean ± std "
             "over seeds (latest record for one seed). FID/KID comparable only at equal n and reference split. "
             "Published rows are quoted under their papers' protocols. Bits/dim: upper bounds on the discrete NLL "
             "where marked bound, with the standard error over the n test images scored (se) and n.</p>"]
    for t in tables:
        parts.append(f"<h2>{html.escape(t['dataset'])} — profile {html.escape(t['profile'])}</h2><table><tr>")
        parts.append("".join(f"<th>{html.escape(HEADERS[c])}</th>" for c in COLUMNS) + "</tr>")
        for r in t["ours"] + t["baselines"] + t["references"]:
            title = f" title='{html.escape(r['_note'], quote=True)}'" if "_note" in r else ""
            parts.append(f"<tr class='{r['source']}'{title}>" + "".join(f"<td>{cell(r.get(c, '—'))}</td>" for c in COLUMNS) + "</tr>")
        parts.append("</table>")
        for note in (_domain_note(t["records"]), _likelihood_note(t["records"]), _provenance_note(t["records"]),
                     _compute_note(t["records"])):
            if note:
                parts.append(f"<p><small>{html.escape(note.replace('**', ''))}</small></p>")
        for caption, b64 in _plots(t):
            parts.append(f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{html.escape(caption)}</figcaption></figure>")
        grids = []
        for r in t["records"]:
            p = results_dir / r.artifacts.get("sample_grid", "")
            if r.artifacts.get("sample_grid") and p.is_file():
                b64 = base64.b64encode(p.read_bytes()).decode()
                grids.append(f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{html.escape(r.run_id)}</figcaption></figure>")
        if grids:
            parts.append("<div class='grids' style='display:flex;flex-wrap:wrap'>" + "".join(grids) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build(results_dir: Path, out_dir: Path, reference_file: Path | None = None) -> list[Path]:
    """Write leaderboard.md and leaderboard.html into ``out_dir`` (atomically); returns their paths."""
    reference_file = reference_file or paths.reference_file()
    md, page = Path(out_dir) / "leaderboard.md", Path(out_dir) / "leaderboard.html"
    # Read the records and write the pages under one lock: a concurrent build that read fewer records
    # cannot overwrite a newer leaderboard after it.
    with file_lock(Path(out_dir) / ".leaderboard.lock"):
        tables = build_tables(Path(results_dir), reference_file)
        atomic_write_text(md, render_markdown(tables) + restoration_markdown(Path(results_dir), Path(out_dir)))
        page_html = render_html(tables, Path(results_dir))
        atomic_write_text(page, page_html.replace("</body></html>", restoration_html(Path(results_dir)) + "</body></html>"))
    return [md, page]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m genbench leaderboard", description=__doc__.split("\n\n")[0])
    root = paths.output_root()  # GENBENCH_HOME, else the working directory: where `bench` writes records
    p.add_argument("--results-dir", type=Path, default=paths.results_dir(root))
    p.add_argument("--out-dir", type=Path, default=root / "benchmarks")
    p.add_argument("--reference", type=Path, default=None, help="published numbers (default: the packaged reference.yaml)")
    args = p.parse_args(argv)
    for path in build(args.results_dir, args.out_dir, args.reference):
        print(f"genbench: wrote {path}")
    return 0
