"""``python -m genbench leaderboard``: result records -> ``benchmarks/leaderboard.md`` and ``.html``.

One section per dataset x profile: a table, the sample grids beside real test images, and the plots
(quality against training compute, FID against bits/dim, FID against sampler steps, class coverage,
training curves). The HTML page is one self-contained file (images embedded, a few lines of inline
JavaScript to sort the table); the markdown links the same figures, written under ``leaderboard_files/``
beside it. In each table genbench's rows aggregate the records of one model over seeds (mean, and std
when there are several seeds; one seed = its latest record), so reruns never duplicate a row. Beside
them: the real-vs-real FID floor at the same n, the per-pixel histogram bits/dim baseline computed from
the data, and published reference rows from ``configs/reference.yaml``, each marked as such.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from genbench import paths
from genbench.bench import leaderboard_conditional, plots
from genbench.bench.record import ResultRecord, atomic_write_text, load_records
from genbench.io import file_lock
from genbench.metrics import table as T
from genbench.restoration.report import restoration_html, restoration_markdown

ASSETS_DIR = "leaderboard_files"  # beside leaderboard.md: the figures and real-data grids it links
_BOARD = T.leaderboard_metrics()
LOWER_IS_BETTER = {m.key: m.lower_is_better for m in _BOARD}
DIGITS = {m.key: m.digits for m in _BOARD}
# Numeric columns that are not metrics of the table (their labels carry their units); the throughputs are
# better higher (an arrow in the header; never bold: they measure the machine as much as the model)
_EXTRA_NUMERIC = ("params", "train_time", "train_pflop", "train_images_per_s", "sample_images_per_s", "seeds")
_HIGHER_IS_BETTER = ("train_images_per_s", "sample_images_per_s")
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
        num = numeric_row(recs)
        row["_num"].update({k: num[k] for k in _EXTRA_NUMERIC})
        row["params"] = _fmt_params(first.params)
        row["train_time"] = _fmt_time(num["train_wall_time_s"])
        pflop = num["train_pflop"]
        row["train_pflop"] = "—" if pflop is None else f"{pflop:.3g} ({_fmt_count(num['images_seen'])} img)"
        row["train_images_per_s"] = _fmt(*_agg([r.train.get("images_per_s") for r in recs]), 1)
        row["sample_images_per_s"] = _fmt(*_agg([(r.metrics.get(T.SAMPLING) or {}).get("images_per_s") for r in recs]), 1)
        rows.append(row)
    return rows


def numeric_row(recs: list[ResultRecord]) -> dict[str, Any]:
    """One model's row as numbers (means over its records; None where absent): a key per leaderboard
    metric, then parameters, training time and compute, throughput. What W&B's leaderboard table holds."""
    first = recs[0]
    out: dict[str, Any] = {"family": first.family, "model": first.model, "seeds": len(recs),
                           "truncated": bool(_truncated(recs))}
    out.update({key: _agg([_value(r, key) for r in recs])[0] for key in DIGITS})
    wall = _agg([r.train.get("wall_time_s") for r in recs])[0]
    out.update({
        "params": first.params,
        "train_wall_time_s": wall,
        "train_time": None if wall is None else wall / 60,
        "train_pflop": _agg([_compute(r, "train_pflop") for r in recs])[0],
        "images_seen": _agg([_compute(r, "images_seen") for r in recs])[0],
        "train_images_per_s": _agg([r.train.get("images_per_s") for r in recs])[0],
        "sample_images_per_s": _agg([(r.metrics.get(T.SAMPLING) or {}).get("images_per_s") for r in recs])[0],
    })
    return out


def numeric_rows(records: list[ResultRecord]) -> list[dict[str, Any]]:
    """:func:`numeric_row` of each model among ``records`` (one dataset x profile), sorted by model."""
    by_model: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in records:
        by_model[r.model].append(r)
    return [numeric_row(recs) for _, recs in sorted(by_model.items())]


def _mark_best(rows: list[dict[str, Any]]) -> None:
    """Adds to each row's ``_best`` the metrics where it is best among the complete genbench rows.

    Values are compared as displayed (rounded to the metric's digits), so rows that tie are all marked;
    when every row ties, none is (no row is better than another)."""
    for row in rows:
        row.setdefault("_best", set())
    for key, lower in LOWER_IS_BETTER.items():
        vals = [(round(r["_num"][key], DIGITS[key]), i) for i, r in enumerate(rows)
                if r["_num"].get(key) is not None and not r.get("_truncated")]
        if len(vals) < 2:
            continue
        best = (min if lower else max)(v for v, _ in vals)
        winners = [i for v, i in vals if v == best]
        if len(winners) < len(vals):
            for i in winners:
                rows[i]["_best"].add(key)


def header(column: str) -> str:
    """A column's header: its label and an arrow for its direction (↓ lower is better, ↑ higher)."""
    lower = LOWER_IS_BETTER.get(column, False if column in _HIGHER_IS_BETTER else None)
    arrow = "" if lower is None else (" ↓" if lower else " ↑")
    return HEADERS[column] + arrow


def unit(column: str) -> str:
    """A metric column's unit from the metric table ("" where the label says it, or for FID which has none)."""
    m = T.METRICS.get(column)
    return "" if m is None or m.unit == m.label else m.unit


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
                     "_num": {T.BPD: ref.get(T.BPD), T.FID: ref.get(T.FID)},
                     "_note": f"{ref.get('citation', '')}; {ref.get('protocol', '')}"})
    return rows


def _floor(records: list[ResultRecord], key: str) -> dict[str, Any] | None:
    """The latest real-vs-real entry ``key`` (FID or domain FD floor) among ``records``."""
    found = [r.metrics.get(key) for r in records if isinstance(r.metrics.get(key), dict)]
    found = [f for f in found if isinstance(f.get("value"), (int, float))]
    return found[-1] if found else None


def baseline_rows(dataset: str, records: list[ResultRecord], hist_bpd: float | None = None) -> list[dict[str, Any]]:
    """The real-vs-real FID floor (from the records) and the per-pixel histogram bpd (``hist_bpd``, from the data)."""
    rows = []
    f = _floor(records, T.FID_FLOOR)
    if f is not None:
        kid = f.get("kid") if isinstance(f.get("kid"), (int, float)) else None
        rows.append({"source": "floor", "family": "real data", "model": f"real vs real ({f.get('protocol', '')})",
                     T.BPD: "—", T.FID: f"{f['value']:.1f} @{f.get('n')}",
                     T.KID: _fmt(kid, f.get("kid_std"), 4) if kid is not None else "—", T.PRECISION: "—",
                     T.RECALL: "—", "params": "—", "train_time": "—", "train_images_per_s": "—",
                     "sample_images_per_s": "—", "seeds": "—", "_num": {T.FID: f["value"], T.KID: kid}})
        dom = _floor(records, T.DOMAIN_FD_FLOOR)
        if dom is not None:
            rows[-1][T.DOMAIN_FD] = f"{dom['value']:.1f} @{dom.get('n')}"
            rows[-1]["_num"][T.DOMAIN_FD] = dom["value"]
    if hist_bpd is not None:
        rows.append({"source": "baseline", "family": "—", "model": "per-pixel histogram (fit on train)",
                     T.BPD: f"{hist_bpd:.3f} (exact)", T.FID: "—", T.KID: "—", T.PRECISION: "—", T.RECALL: "—",
                     "params": "—", "train_time": "—", "train_images_per_s": "—", "sample_images_per_s": "—",
                     "seeds": "—", "_num": {T.BPD: hist_bpd}})
    return rows


def _data(dataset: str) -> dict[str, Any]:
    """From the dataset itself: the per-pixel histogram bits/dim (a categorical per pixel fitted on the
    training split, scored on the test split) and the first ``GRID_IMAGES`` test images for the real-data
    grid. Either is None for a dataset without an offline source or without images."""
    try:
        import torch

        from genbench.data import GenDataModule
        from genbench.metrics.baselines import pixel_histogram_bpd

        dm = GenDataModule(dataset)
        if dm.is_continuous:
            return {"hist_bpd": None, "real": None, "levels": None}
        dm.prepare_data()
        dm.setup()
        train = torch.cat([dm.split("train")[0], dm.split("val")[0]])
        test = dm.split("test")[0]
        return {"hist_bpd": pixel_histogram_bpd(train, test, dm.num_levels), "real": test[:plots.GRID_IMAGES],
                "levels": dm.num_levels}
    except Exception:  # noqa: BLE001 - a dataset without an offline source simply has no baseline row or grid
        return {"hist_bpd": None, "real": None, "levels": None}


def _markdown_cell(row: dict[str, Any], column: str) -> str:
    text = str(row.get(column, "—"))
    return f"**{text}**" if column in row.get("_best", ()) else text


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(header(c) for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_markdown_cell(r, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def build_tables(results_dir: Path, reference_file: Path) -> list[dict[str, Any]]:
    """One table per dataset x profile: its records, rows, reference values, figures and sample grids.

    Figures are PNG bytes (``figures``: name, caption, png); grids are the records' sample grids and the
    real-data grid (``grids``: label, caption, png, and ``path`` where the PNG is already a file)."""
    records = load_records(results_dir)
    groups: dict[tuple[str, str], list[ResultRecord]] = defaultdict(list)
    for r in records:
        groups[(r.dataset, r.profile)].append(r)
    data = {dataset: _data(dataset) for dataset in sorted({d for d, _ in groups})}
    tables = []
    for (dataset, profile), recs in sorted(groups.items()):
        ours = table_rows(recs)
        _mark_best(ours)
        t = {"dataset": dataset, "profile": profile, "records": recs, "ours": ours,
             "baselines": baseline_rows(dataset, recs, data[dataset]["hist_bpd"]),
             "references": reference_rows(dataset, reference_file), "hist_bpd": data[dataset]["hist_bpd"],
             "fid_floor": _floor(recs, T.FID_FLOOR), "domain_fd_floor": _floor(recs, T.DOMAIN_FD_FLOOR)}
        t["figures"] = figures(t)
        t["grids"] = grids(t, Path(results_dir), data[dataset])
        t["extraction_figures"] = extraction_figures(t, Path(results_dir))
        t["conditional"] = leaderboard_conditional.section(recs, Path(results_dir), section_id(t))
        tables.append(t)
    return tables


INTRO = ("Rows marked *genbench* are this project's runs (mean ± std over seeds where there are several; otherwise "
         "the latest record of the one seed). FID/KID are only comparable at equal n and reference split; *floor* "
         "is real-vs-real at the same n; *baseline* is an independent per-pixel categorical fitted on the training "
         "split; *published* rows are quoted from the papers (citations and protocols below each table) under "
         "their own protocols. Bits/dim: upper bounds on the discrete NLL where marked `bound` (every model scored "
         "here; the histogram baseline is exact), with the standard error over the n test images scored (se) and "
         "n; the nats they come from are in the notes below each table. ↓ lower is better, ↑ higher is better; "
         "**bold** = best genbench value in the table (rows that tie at the digits shown are all bold; none when "
         "every row ties; a truncated run is never bold).")


def _sampler_note(records: list[ResultRecord]) -> str:
    protos = sorted({f"{r.model}: {r.metrics.get(T.SAMPLING, {}).get('sampler', 'n/a')}, "
                     f"steps {r.metrics.get(T.SAMPLING, {}).get('steps', 'n/a')}" for r in _latest(records).values()
                     if r.metrics.get(T.SAMPLING, {}).get("sampler")})
    return "Samplers: " + "; ".join(protos) + "." if protos else ""


def _sample_variant_note(records: list[ResultRecord]) -> str:
    """FIDs of the other samplers of the same weights (``fid_<variant>``), beside the declared one."""
    parts = []
    for r in _latest(records).values():
        for key, m in sorted(r.metrics.items()):
            if key.startswith(T.FID_VARIANT_PREFIX) and T.lookup(key).key == T.FID_VARIANT_PREFIX \
                    and isinstance(m, dict) and isinstance(m.get("value"), (int, float)):
                parts.append(f"{r.model} with {m.get('variant')} ({m.get('description')}): FID "
                             f"{T.lookup(key).fmt(m['value'])} @{m.get('n')} vs {m.get('reference_split')}")
    return ("Sample variants (the same weights drawn another way; the FID column is the sampler the config "
            "declares): " + "; ".join(parts) + ".") if parts else ""


def _published_notes(table: dict[str, Any]) -> list[str]:
    return [f"{r['model']}: {r['_note']}" for r in table["references"]]


def _notes(table: dict[str, Any]) -> list[str]:
    recs = table["records"]
    return [n for n in (_sampler_note(recs), _sample_variant_note(recs), _domain_note(recs), _likelihood_note(recs), _provenance_note(recs),
                        _compute_note(recs)) if n]


def render_markdown(tables: list[dict[str, Any]], out_dir: Path | None = None) -> str:
    """The leaderboard as markdown: per table, the rows, notes, and the grids and plots as image links
    (paths relative to ``out_dir``; only entries that have a ``path``)."""

    def link(entry: dict[str, Any], alt: str) -> str | None:
        if entry.get("path") is None or out_dir is None:
            return None
        return f"![{alt}]({os.path.relpath(entry['path'], out_dir)})"

    out = ["# genbench leaderboard", "",
           "Generated by `make leaderboard` from `benchmarks/results/*.json`; `leaderboard.html` beside it is the "
           "same page with sortable tables and every image embedded. " + INTRO, ""]
    for t in tables:
        out += [f"## {t['dataset']} — profile `{t['profile']}`", "",
                _markdown_table(t["ours"] + t["baselines"] + t["references"]), ""]
        published = _published_notes(t)
        if published:
            out += ["Published rows:", *[f"- {n}" for n in published], ""]
        for note in _notes(t):
            out += [note, ""]
        grid_links = [(g, link(g, g["label"])) for g in t.get("grids", [])]
        grid_links = [(g, s) for g, s in grid_links if s]
        if grid_links:
            out += ["### Samples", "", "| " + " | ".join(g["label"] for g, _ in grid_links) + " |",
                    "|" + "---|" * len(grid_links), "| " + " | ".join(s for _, s in grid_links) + " |",
                    "| " + " | ".join(g["caption"] for g, _ in grid_links) + " |", ""]
        extraction = [(g, link(g, g["label"])) for g in t.get("extraction_figures", [])]
        extraction = [(g, s) for g, s in extraction if s]
        if extraction:
            out += ["### Closest samples to the training set", "",
                    "Each model's flagged samples (or, when none is flagged, its closest ones) above their nearest "
                    "training images, with d1/dk over each.", ""]
            for g, s in extraction:
                out += [f"**{g['label']}**: {g['caption']}", "", s, ""]
        if t.get("conditional"):
            out += leaderboard_conditional.markdown(t["conditional"], link)
        figs = [(f, link(f, f["name"])) for f in t.get("figures", [])]
        if figs:
            out += ["### Plots", ""]
            for f, s in figs:
                out += ([s, ""] if s else []) + [f"*{f['caption']}*", ""]
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
        stages = train.get("stages") or {}
        if stages and all(s.get("flops_per_image") for s in stages.values()):  # a model trained in stages
            text += " on average (" + ", ".join(f"{name} {s['images']} images at {s['flops_per_image'] / 1e9:.3g}"
                                                for name, s in stages.items()) + ")"
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


def section_id(table: dict[str, Any]) -> str:
    return f"{table['dataset']}-{table['profile']}"


def _label(r: ResultRecord) -> str:
    return f"{r.model} ({r.family})" if r.family != r.model else r.model


def figures(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The plots of one table as PNG bytes: ``name`` (a file name stem), ``caption``, ``png``; a plot whose
    data no record holds is a ``missing`` entry (its caption says what would produce it)."""
    latest = _latest(table["records"])
    stem = section_id(table)
    fid_floor = (table.get("fid_floor") or {}).get("value")
    floor_n = (table.get("fid_floor") or {}).get("n")
    out: list[dict[str, Any]] = []

    def add(name: str, caption: str, fig: Any, missing: str = "") -> None:
        if fig is not None:
            out.append({"name": f"{stem}-{name}", "caption": caption, "png": plots.png_bytes(fig)})
        elif missing:
            out.append({"name": f"{stem}-{name}", "caption": missing, "png": None})

    # quality against training compute: the curve measured during training
    curves = {_label(r): [p for p in r.train.get("quality_curve", []) if p.get("train_flops")] for r in latest.values()}
    curves = {k: v for k, v in curves.items() if v}
    n_of = {m.curve_key: next((p.get("n_likelihood" if m.curve_key == T.BPD else "n_samples")
                               for pts in curves.values() for p in pts), None) for m in T.curve_metrics()}
    panels = [(m.curve_key, f"{m.curve_label} @{n_of[m.curve_key]}" if n_of[m.curve_key] else m.curve_label)
              for m in T.curve_metrics() if m.curve_label]
    refs = {}
    if table.get("hist_bpd") is not None:
        refs[T.BPD] = (table["hist_bpd"], f"per-pixel histogram {table['hist_bpd']:.3f}")
    if table.get("domain_fd_floor"):
        refs["domain_fd"] = (table["domain_fd_floor"]["value"],
                             f"real vs real {table['domain_fd_floor']['value']:.1f} @{table['domain_fd_floor'].get('n')}")
    add("quality_vs_compute", "Quality against training compute (training PFLOP, log scale), measured during "
        "training on a reduced protocol (n in each title); dashed: the per-pixel histogram and the real-vs-real "
        "floor. Curve values compare with each other, not with the table (other n and subset).",
        plots.quality_vs_compute_figure(curves, panels, refs),
        "Quality against training compute: no record holds a training curve (train.quality_curve).")
    # FID against bits/dim
    points = [(_label(r), _value(r, T.BPD), _value(r, T.FID)) for r in latest.values() if _value(r, T.FID) is not None]
    fid_n = next((r.metrics[T.FID].get("n") for r in latest.values() if _value(r, T.FID) is not None), None)
    add("fid_vs_bpd", f"FID @{fid_n} against bits/dim (both lower is better). Dashed: the per-pixel histogram "
        f"baseline (bits/dim, vertical) and the real-vs-real FID floor @{floor_n} (horizontal); a model without a "
        "density is a dotted line at its FID.",
        plots.bpd_fid_figure(points, table.get("hist_bpd"), fid_floor))
    # FID against sampler steps
    sweeps = {_label(r): [(int(s["steps"]), float(s[T.FID])) for s in r.metrics.get(T.FID_VS_STEPS) or []
                          if isinstance(s, dict) and s.get(T.FID) is not None]
              for r in latest.values()}
    sweep_n = next((s.get("n") for r in latest.values() for s in r.metrics.get(T.FID_VS_STEPS) or []
                    if isinstance(s, dict)), None)
    add("fid_vs_steps", f"FID @{sweep_n} against the number of sampler steps (log scale); dashed: the real-vs-real "
        "floor.", plots.fid_vs_steps_figure(sweeps, fid_floor),
        "FID against sampler steps: no record in this table has a sampler sweep "
        "(evaluation.sampler_steps_sweep; the paper and smoke DDPM profiles set one).")
    # class coverage
    hists = {}
    for r in latest.values():
        m = r.metrics.get(T.CLASS_COVERAGE)
        if isinstance(m, dict) and m.get("sample_histogram") and m.get("real_histogram"):
            hists[_label(r)] = {"sample": m["sample_histogram"], "real": m["real_histogram"],
                                "title": f"{_label(r)}: TV {m['value']:.3f}, {m.get('classes_covered')}/"
                                         f"{m.get('num_classes')} classes"}
    cov_n = next((r.metrics[T.CLASS_COVERAGE].get("n") for r in latest.values()
                  if isinstance(r.metrics.get(T.CLASS_COVERAGE), dict)), None)
    add("class_coverage", f"Class coverage†: the share of n={cov_n} samples the domain classifier assigns to each "
        "class (filled) beside the share among real test images (outlined); TV = total-variation distance.",
        plots.class_coverage_figure(hists))
    # training curves
    train_curves = {r.model: r.train.get("curves") or {} for r in latest.values() if r.train.get("curves")}
    add("training_curves", "Training curves logged by each model (x: optimizer steps). Each family's own loss "
        "(GAN loss, DDPM MSE, VAE/flow negative log-likelihood) has its own panel; val/bpd is comparable across "
        "models and shares one.", plots.training_curves_figure(train_curves))
    return out


def _metric_caption(r: ResultRecord) -> str:
    """What sits under a sample grid: FID and bits/dim with n and the bound kind."""
    parts = []
    fid = r.metrics.get(T.FID)
    if _value(r, T.FID) is not None:
        parts.append(f"FID {fid['value']:.1f} @{fid.get('n')}")
    bpd = r.metrics.get(T.BPD)
    if _value(r, T.BPD) is not None:
        parts.append(f"{bpd['value']:.3f} bits/dim ({bpd_kind(bpd)})")
    elif isinstance(bpd, dict) and bpd.get("available") is False:
        parts.append("no density")
    return " · ".join(parts)


def grids(table: dict[str, Any], results_dir: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The real-data grid (first test images, drawn like the samples) then each model's final sample grid."""
    from PIL import Image

    out: list[dict[str, Any]] = []
    if data.get("real") is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = plots.save_sample_grid(data["real"], Path(tmp) / "real.png", levels=max(data["levels"], 2))
            png = path.read_bytes()
        with Image.open(io.BytesIO(png)) as im:
            size = im.size
        out.append({"name": f"{table['dataset']}-real-test", "label": "real data",
                    "caption": f"the first {int(data['real'].shape[0])} test images", "png": png, "path": None,
                    "size": size, "pixel_exact": True})
    for r in _latest(table["records"]).values():
        rel = r.artifacts.get("sample_grid")
        path = Path(results_dir) / rel if rel else None
        if path is None or not path.is_file():
            continue
        png = path.read_bytes()
        with Image.open(path) as im:
            size = im.size
        shape = (r.data or {}).get("shape") or []
        images = len(shape) == 3
        exact = images and plots.is_pixel_exact_grid(size, (shape[1], shape[2]))
        out.append({"name": r.run_id, "label": _label(r), "caption": _metric_caption(r), "png": png, "path": path,
                    "size": size, "pixel_exact": exact,
                    "note": "" if exact else "older record: a resampled figure, not pixel-exact" if images
                    else "a scatter plot of the samples"})
    return out


def extraction_figures(table: dict[str, Any], results_dir: Path) -> list[dict[str, Any]]:
    """Each model's extraction figure: its flagged samples (or, when none is flagged, its closest ones) above
    their nearest training images, as the bench saved it."""
    from PIL import Image

    out: list[dict[str, Any]] = []
    for r in _latest(table["records"]).values():
        rel = r.artifacts.get("extraction_figure")
        path = Path(results_dir) / rel if rel else None
        if path is None or not path.is_file():
            continue
        entry = r.metrics.get(T.EXTRACTION_RATE) or {}
        with Image.open(path) as im:
            size = im.size
        caption = (f"{entry.get('n_flagged', '?')} of {entry.get('n', '?')} samples flagged (d1/dk below "
                   f"{entry['threshold']:.2f})" if "threshold" in entry else "")
        out.append({"name": f"{r.run_id}-extraction", "label": _label(r), "caption": caption,
                    "png": path.read_bytes(), "path": path, "size": size, "pixel_exact": False,
                    "note": "top: samples, lowest d1/dk first; bottom: each one's nearest training image"})
    return out


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1600px;margin:0 auto;padding:1.5em 2em 4em}
header{background:#1f2a44;color:#fff;padding:1.2em 2em}header h1{margin:0 0 .2em;font-size:1.6em}
header p{margin:.3em 0;max-width:1100px;font-size:13px;line-height:1.45;color:#dfe4ee}
header a{color:#ffd479}nav{margin-top:.6em;font-size:14px}nav a{margin-right:1.2em}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:1em 1.5em;margin:1.5em 0}
h2{margin-top:.2em;border-bottom:2px solid #1f2a44;padding-bottom:.2em}h3{margin:1.2em 0 .4em;color:#1f2a44}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:12px}
th{background:#eef1f6;cursor:pointer;user-select:none;vertical-align:bottom;position:relative}
th small{display:block;font-weight:normal;color:#666}
th[data-dir=asc]::after{content:' ▲';font-size:10px}th[data-dir=desc]::after{content:' ▼';font-size:10px}
td,th{border:1px solid #d6d6d6;padding:3px 5px;text-align:left}td.num{text-align:right}
td small{display:block;color:#666;font-size:10.5px;text-align:right}td.c-bpd small{min-width:12em}
tr.genbench td{background:#fff}tr.floor td,tr.baseline td{background:#f3f6f3}
tr.published td{color:#555;font-style:italic;background:#fbfbf7}td b{color:#0b5d1e}
.legend{font-size:12px;color:#555}
.grids{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.grids figure,.figs figure{margin:0;background:#fff}
.grids img{image-rendering:pixelated;image-rendering:crisp-edges;border:1px solid #ccc;display:block}
.grids figcaption{font-size:12.5px;margin-top:4px;max-width:480px}.grids figcaption b{display:block}
.figs{display:flex;flex-wrap:wrap;gap:22px}.figs img{max-width:100%;display:block}
.figs figcaption{font-size:12px;color:#444;max-width:760px;margin-top:4px}
.missing{font-size:12.5px;color:#7a5a00;background:#fff8e1;border:1px solid #f0dca0;padding:6px 10px;border-radius:4px}
ul.notes{font-size:12.5px;line-height:1.5;color:#333;padding-left:1.2em}ul.notes li{margin:.25em 0}
"""

# Click a header to sort its table (again to reverse); cells sort by data-v (numbers) or their text; empty
# cells ("—") go last either way. Works for every table on the page (a header row in thead or first row).
SORT_JS = """
document.querySelectorAll('table').forEach(function(t){
  var head=t.tHead?t.tHead.rows[0]:t.rows[0];
  Array.prototype.forEach.call(head.cells,function(th,i){th.title=(th.title?th.title+' \\u2014 ':'')+'click to sort';
    th.addEventListener('click',function(){
      var body=t.tBodies[0],rows=Array.prototype.filter.call(body.rows,function(r){return r!==head;});
      var dir=th.dataset.dir==='asc'?'desc':'asc';
      Array.prototype.forEach.call(head.cells,function(h){delete h.dataset.dir;});th.dataset.dir=dir;
      function key(r){var c=r.cells[i];if(!c)return null;var v=c.dataset.v!==undefined?c.dataset.v:c.textContent.trim();
        if(v===''||v==='\\u2014')return null;var x=parseFloat(v);return (c.dataset.v!==undefined&&!isNaN(x))?x:v.toLowerCase();}
      rows.sort(function(a,b){var x=key(a),y=key(b);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
        return (x<y?-1:x>y?1:0)*(dir==='asc'?1:-1);});
      rows.forEach(function(r){body.appendChild(r);});});});
});
// once loaded, the page records how many of its images decoded (read by a headless-browser test)
window.addEventListener('load',function(){var ok=0;for(var i=0;i<document.images.length;i++){
  var im=document.images[i];if(im.complete&&im.naturalWidth>0)ok++;}
  document.body.setAttribute('data-images-decoded',ok+'/'+document.images.length);});
"""

GRID_DISPLAY_PX = 480  # pixel-exact grids are shown at the largest whole-number zoom that fits this width


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _html_table(rows: list[dict[str, Any]]) -> str:
    heads = []
    for c in COLUMNS:
        u = unit(c)
        tip = {True: "lower is better", False: "higher is better"}.get(LOWER_IS_BETTER.get(c), "")
        title = f" title='{html.escape(tip, quote=True)}'" if tip else ""
        heads.append(f"<th{title}>{html.escape(header(c))}" + (f"<small>{html.escape(u)}</small>" if u else "") + "</th>")
    body = []
    for r in rows:
        tds = []
        for c in COLUMNS:
            text = html.escape(str(r.get(c, "—")))
            v = (r.get("_num") or {}).get(c)
            if v is None and c == "seeds" and isinstance(r.get(c), int):
                v = r[c]
            attr = f" class='num c-{c}' data-v='{v!r}'" if isinstance(v, (int, float)) else ""
            # a number's qualifiers (se, n, bound kind, reference split) go on a small second line
            main, _, detail = text.partition(" ") if attr or text.startswith("n/a") else (text, "", "")
            main = f"<b>{main}</b>" if c in r.get("_best", ()) else main
            tds.append(f"<td{attr}>{main}" + (f"<small>{detail}</small>" if detail else "") + "</td>")
        body.append(f"<tr class='{html.escape(r['source'])}'>" + "".join(tds) + "</tr>")
    return ("<div class='scroll'><table>\n<thead><tr>" + "".join(heads) + "</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody></table></div>")


def _html_grid(g: dict[str, Any]) -> str:
    w, h = g["size"]
    if g["pixel_exact"]:
        zoom = max(1, GRID_DISPLAY_PX // w)
        style, note = f"width:{w * zoom}px;height:{h * zoom}px", f"{w}×{h} px shown ×{zoom}, nearest neighbour"
    else:  # a scatter plot (2-D data), or an older record's grid (a resampled figure): shown as it is
        style, note = f"width:{w}px", g.get("note", "")
    return (f"<figure><img src='data:image/png;base64,{_b64(g['png'])}' style='{style}' "
            f"alt='{html.escape(g['label'], quote=True)}'><figcaption><b>{html.escape(g['label'])}</b>"
            f"{html.escape(g['caption'])}<br><small>{html.escape(note)}</small></figcaption></figure>")


def _html_section(t: dict[str, Any]) -> str:
    parts = [f"<section id='{html.escape(section_id(t), quote=True)}'>",
             f"<h2>{html.escape(t['dataset'])} — profile <code>{html.escape(t['profile'])}</code></h2>",
             _html_table(t["ours"] + t["baselines"] + t["references"]),
             "<p class='legend'>↓ lower is better, ↑ higher is better; bold: best genbench value (ties all bold); "
             "click a header to sort. Green rows: real-data floor and per-pixel baseline; italic rows: published "
             "numbers under their papers' protocols.</p>"]
    published = _published_notes(t)
    if published:
        parts.append("<h3>Published rows: citations and protocols</h3><ul class='notes'>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in published) + "</ul>")
    if t.get("grids"):
        parts.append("<h3>Samples beside real data</h3><div class='grids'>"
                     + "".join(_html_grid(g) for g in t["grids"]) + "</div>")
    if t.get("extraction_figures"):
        parts.append("<h3>Closest samples to the training set</h3><div class='grids'>"
                     + "".join(_html_grid(g) for g in t["extraction_figures"]) + "</div>")
    if t.get("conditional"):
        parts.append(leaderboard_conditional.html_section(t["conditional"], _html_grid))
    figs = t.get("figures", [])
    if figs:
        parts.append("<h3>Plots</h3><div class='figs'>")
        for f in figs:
            if f["png"] is None:
                parts.append(f"<p class='missing'>{html.escape(f['caption'])}</p>")
            else:
                parts.append(f"<figure id='{html.escape(f['name'], quote=True)}'><img src='data:image/png;base64,"
                             f"{_b64(f['png'])}' alt='{html.escape(f['name'], quote=True)}'><figcaption>"
                             f"{html.escape(f['caption'])}</figcaption></figure>")
        parts.append("</div>")
    notes = _notes(t)
    if notes:
        parts.append("<h3>Protocols, likelihoods, provenance and compute</h3><ul class='notes'>"
                     + "".join(f"<li>{html.escape(n.replace('**', ''))}</li>" for n in notes) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(tables: list[dict[str, Any]], sections: tuple[tuple[str, str, str], ...] = ()) -> str:
    """The leaderboard as one self-contained HTML page (images embedded, inline CSS and sorting script).

    ``sections`` are extra ``(id, title, html)`` sections appended after the tables (the restoration
    results), each linked from the page's navigation."""
    nav = [(section_id(t), f"{t['dataset']} · {t['profile']}") for t in tables] + [(i, title) for i, title, _ in sections]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'><title>genbench leaderboard</title>"
             f"<style>{STYLE}</style></head><body>",
             "<header><h1>genbench leaderboard</h1><p>Generated from <code>benchmarks/results/*.json</code> by "
             "<code>python -m genbench leaderboard</code>. " + html.escape(INTRO.replace("*", "").replace("`", ""))
             + "</p><nav>" + "".join(f"<a href='#{html.escape(i, quote=True)}'>{html.escape(n)}</a>" for i, n in nav)
             + "</nav></header><main>"]
    parts += [_html_section(t) for t in tables]
    parts += [f"<section id='{html.escape(i, quote=True)}'>{body}</section>" for i, _, body in sections if body]
    parts.append(f"</main><script>{SORT_JS}</script></body></html>")
    return "\n".join(parts)


def write_assets(tables: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Writes the figures and real-data grids under ``out_dir/leaderboard_files`` (atomically) and sets each
    entry's ``path``; files of an earlier build that this one no longer has are removed."""
    assets = Path(out_dir) / ASSETS_DIR
    assets.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        conditional = t.get("conditional") or {}
        for entry in [*t.get("figures", []), *t.get("grids", []), *conditional.get("figures", [])]:
            if entry.get("path") is not None or entry.get("png") is None:
                continue
            path = assets / f"{entry['name']}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(entry["png"])
            tmp.replace(path)
            entry["path"] = path
            written.append(path)
    for old in assets.glob("*.png"):
        if old not in written:
            old.unlink()
    return written


def build(results_dir: Path, out_dir: Path, reference_file: Path | None = None) -> list[Path]:
    """Write leaderboard.md (with its images under ``leaderboard_files/``) and the self-contained
    leaderboard.html into ``out_dir`` (atomically); returns the two pages' paths."""
    reference_file = reference_file or paths.reference_file()
    md, page = Path(out_dir) / "leaderboard.md", Path(out_dir) / "leaderboard.html"
    # Read the records and write the pages under one lock: a concurrent build that read fewer records
    # cannot overwrite a newer leaderboard after it.
    with file_lock(Path(out_dir) / ".leaderboard.lock"):
        tables = build_tables(Path(results_dir), reference_file)
        write_assets(tables, Path(out_dir))
        atomic_write_text(md, render_markdown(tables, Path(out_dir))
                          + restoration_markdown(Path(results_dir), Path(out_dir)))
        restoration = restoration_html(Path(results_dir))
        sections = (("restoration", "restoration", restoration),) if restoration else ()
        atomic_write_text(page, render_html(tables, sections))
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
