"""Reading an offline W&B run directory without syncing (what the bench tests assert W&B received)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_offline_run(run_path: Path) -> dict[str, Any]:
    """Summary, history keys, images, config, tables and artifacts of an offline W&B run directory
    (``offline-run-*``), without syncing.

    ``config``: every config update merged (keys as written); ``config_updates``: the keys of each update
    record in order (to see what was written more than once); ``history``: the logged rows (key -> value);
    ``tables``: the JSON of each logged table, by history key; ``artifacts``: name, type, file paths and
    metadata of each logged artifact.

    The ``.wandb`` file is a sequence of protobuf ``Record`` messages in LevelDB's log framing (32 KiB
    blocks, 7-byte record headers) after a 7-byte W&B header.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    run_path = Path(run_path)
    (store,) = run_path.glob("*.wandb")
    data = store.read_bytes()
    block, header = 32768, 7
    pos, pending, records = 7, b"", []
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        fragment = data[pos + header:pos + header + length]
        pos += header + length
        if kind == 1:  # full record
            records.append(fragment)
        elif kind == 2:  # first fragment
            pending = fragment
        elif kind == 3:  # middle
            pending += fragment
        elif kind == 4:  # last
            records.append(pending + fragment)
            pending = b""
    summary: dict[str, Any] = {}
    history_keys: set[str] = set()
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    config_updates: list[list[str]] = []
    artifacts: list[dict[str, Any]] = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            history_keys.update(row)
            history.append(row)
        elif kind == "config":
            keys = [item.key or "/".join(item.nested_key) for item in rec.config.update]
            config_updates.append(keys)
            for key, item in zip(keys, rec.config.update, strict=True):
                config[key] = json.loads(item.value_json)
        elif kind == "artifact":
            a = rec.artifact
            artifacts.append({"name": a.name, "type": a.type, "files": [e.path for e in a.manifest.contents],
                              "metadata": json.loads(a.metadata) if a.metadata else {}})
    tables = {}
    for row in history:
        for key, value in row.items():
            if key.endswith("/_type") and value == "table-file":
                base = key[: -len("/_type")]
                tables[base] = json.loads((run_path / "files" / row[f"{base}/path"]).read_text())
    images = sorted(str(p.relative_to(run_path)) for p in (run_path / "files" / "media").rglob("*.png"))
    return {"summary": summary, "history_keys": sorted(history_keys), "images": images, "history": history,
            "config": config, "config_updates": config_updates, "tables": tables, "artifacts": artifacts}
