"""What a bench prints: known third-party noise silenced, and the final summary a person reads.

:func:`quiet_known_noise` silences messages that say nothing about the run (a deprecation inside Lightning,
Lightning's advertisement for its cloud logger, W&B's banner; W&B's own output comes back with
``WANDB_SILENT=false``). :func:`summary` is the table printed at the end of ``bench``: each metric of the
record with its unit, direction, n and what it is measured against (bound kind, reference split, the
real-vs-real floor), then where the record, the sample grid, the leaderboard and the W&B run are.
Labels, units and directions come from the metric table (:mod:`genbench.metrics.table`).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from genbench.metrics import table as T

# Messages known to carry nothing for a user (matched by a substring of their text)
_LIGHTNING_NOISE = ("try installing [litlogger]",)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_known_noise() -> None:
    """Silence the known noise before a bench starts (idempotent)."""
    # raised inside Lightning's own pytree helper under torch >= 2.10; nothing the user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(_LIGHTNING_NOISE))
    # W&B's banner and deprecation notices; the summary prints where the run is
    os.environ.setdefault("WANDB_SILENT", "true")


def _arrow(m: T.Metric) -> str:
    return "" if m.lower_is_better is None else (" ↓" if m.lower_is_better else " ↑")


def _note(key: str, m: dict[str, Any], metrics: dict[str, Any]) -> str:
    """What a metric is measured against: bound kind, reference split, the real-vs-real floor."""
    from genbench.bench.leaderboard import bpd_kind

    if key == T.BPD or key.startswith(T.BPD_VARIANT_PREFIX):
        est = m.get("estimator") or ("uniform dequantization" if "dequantization" in m else "")
        k = m.get("K", m.get("k"))
        se = m.get("stderr")
        return "; ".join(p for p in (f"{bpd_kind(m)}" + (f" ({est}{f', K={k}' if k else ''})" if est else ""),
                                     f"se {se:.3f}" if isinstance(se, (int, float)) else "",
                                     f"on {m['subset']}" if m.get("subset") else "") if p)
    floor = metrics.get(T.FID_FLOOR) if key in (T.FID, T.KID) else metrics.get(T.DOMAIN_FD_FLOOR) \
        if key == T.DOMAIN_FD else None
    parts = [f"vs {m['reference_split']}" if m.get("reference_split") else ""]
    if isinstance(floor, dict):
        value = floor.get("value") if key != T.KID else floor.get("kid")
        if isinstance(value, (int, float)):
            parts.append(f"real-vs-real floor {T.METRICS[key].fmt(value)} @{floor.get('n')}")
    if key == T.CLASS_COVERAGE:
        parts.append(f"{m.get('classes_covered')}/{m.get('num_classes')} classes covered")
    if key == T.EXTRACTION_RATE:
        parts.append(f"k={m.get('k')}")
    if key == T.KID and isinstance(m.get("std"), (int, float)):
        parts.append(f"std {m['std']:.4f}")
    return "; ".join(p for p in parts if p)


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """``(label with direction, value, unit, n, note)`` for each leaderboard or summary metric in ``metrics``."""
    rows = []
    for m in T.METRICS.values():
        if m.is_prefix or not (m.leaderboard or m.summary):
            continue
        entry = metrics.get(m.key)
        if not isinstance(entry, dict):
            continue
        if entry.get("available") is False:
            rows.append((m.label + _arrow(m), "n/a", m.unit if m.unit != m.label else "", "",
                         str(entry.get("reason", ""))[:60]))
            continue
        value = entry.get("value")
        if not isinstance(value, (int, float)):
            continue
        rows.append((m.label + _arrow(m), m.fmt(value), m.unit if m.unit != m.label else "",
                     str(entry.get("n", "")), _note(m.key, entry, metrics)))
    return rows


def _table(rows: list[tuple[str, ...]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def summary(record: Any, locations: dict[str, Any]) -> str:
    """The end-of-bench summary of ``record``; ``locations`` maps a name (record, samples, leaderboard,
    W&B) to a path or URL, printed in that order (None values skipped)."""
    head = (f"genbench bench: {record.run_id} — {record.model} ({record.family}) on {record.dataset}, "
            f"profile {record.profile}, seed {record.seed}")
    rows = metric_rows(record.metrics)
    lines = [head]
    if rows:
        lines += _table([("metric", "value", "unit", "n", "measured against"), *rows])
    train = record.train
    budget = (record.compute or {}).get("training") or {}
    text = f"{train.get('steps')} steps, {budget.get('images_seen', train.get('images'))} training images"
    if isinstance(train.get("wall_time_s"), (int, float)):
        text += f" in {train['wall_time_s']:.1f} s ({train.get('images_per_s', float('nan')):.0f} img/s)"
    if isinstance(budget.get("train_pflop"), (int, float)):
        text += f", {budget['train_pflop']:.3g} PFLOP"
    if budget.get("stopped_by"):
        text += f"; stopped by {budget['stopped_by']}" + (" (truncated)" if budget.get("truncated") else "")
    lines.append(f"  training: {text}")
    located = [(name, str(where)) for name, where in locations.items() if where]
    if located:
        lines += _table(located)
    return "\n".join(lines)
