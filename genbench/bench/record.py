"""The result record: one JSON file per benchmark run under ``benchmarks/results/``.

A typed schema (:class:`ResultRecord`) that the bench runner writes and the leaderboard reads. Files are
written atomically (a temporary file in the same directory, fsynced, then ``os.replace``), so a crash or a
concurrent run never leaves a half-written record, and an earlier record is never lost.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from genbench.io import atomic_write_text

__all__ = ["ResultRecord", "atomic_write_text", "environment", "load_records", "redact", "write_record"]

SCHEMA_VERSION = 1
LIBRARIES = ("torch", "torchvision", "lightning", "torchmetrics", "torch-fidelity", "wandb", "datasets", "numpy")
SECRET_MARKERS = ("api_key", "apikey", "token", "password", "secret")


@dataclass
class ResultRecord:
    run_id: str
    model: str
    family: str
    dataset: str
    profile: str
    seed: int
    metrics: dict[str, Any]
    params: int
    train: dict[str, Any]
    evaluation: dict[str, Any]
    data: dict[str, Any]
    model_info: dict[str, Any]
    environment: dict[str, Any]
    config: dict[str, Any]
    compute: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(redact(asdict(self)), indent=2, sort_keys=False, default=_json_default) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResultRecord:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"result record schema {d.get('schema_version')!r} is not {SCHEMA_VERSION}")
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"result record lacks {missing}")
        return cls(**{k: v for k, v in d.items() if k in names})


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def redact(obj: Any) -> Any:
    """Drop values whose key names a secret (API keys, tokens): they never reach a record or config dump."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if any(m in str(k).lower() for m in SECRET_MARKERS) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def write_record(record: ResultRecord, results_dir: Path) -> Path:
    path = Path(results_dir) / f"{record.run_id}.json"
    atomic_write_text(path, record.to_json())
    return path


def load_records(results_dir: Path) -> list[ResultRecord]:
    """Every valid record in ``results_dir``; unreadable files are reported, not silently used."""
    records = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            d = json.loads(p.read_text())
            if not isinstance(d, dict):
                raise ValueError(f"a result record is a JSON object, not a {type(d).__name__}")
            records.append(ResultRecord.from_dict(d))
        except (OSError, ValueError, TypeError, json.JSONDecodeError) as err:
            print(f"genbench: skipping unreadable result record {p}: {err}")
    return records


GENERATED_OUTPUTS = ("benchmarks/results", "benchmarks/leaderboard.md", "benchmarks/leaderboard.html",
                     "benchmarks/perf.json")


def git_sha(root: Path | None = None) -> dict[str, Any]:
    """The commit of the checkout at ``root`` (default: this project's) and whether its code is modified."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        # an installed wheel: its site-packages may sit inside some other repository (a venv in a checkout),
        # whose commit would be misattributed to this code; the package version names the code instead
        return {"sha": None, "dirty": None, "installed_version": _installed_version()}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        # dirty = tracked code or configs differ from the commit; the bench's own outputs do not count
        outputs = [f":(exclude){p}" for p in GENERATED_OUTPUTS]
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *outputs],
                                    cwd=root, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": dirty}


def _installed_version() -> str | None:
    try:
        return metadata.version("genbench")
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str | None:
    """The processor's model name (Linux ``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict[str, Any]:
    import torch

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    hw: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
                          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        hw["gpu"] = torch.cuda.get_device_name(0)
        hw["gpu_count"] = torch.cuda.device_count()
    return {"python": platform.python_version(), "platform": platform.platform(), "hardware": hw,
            "versions": versions, "git": git_sha()}
