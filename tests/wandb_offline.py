"""Reading an offline W&B run directory without syncing (what the bench tests assert W&B received)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_offline_run(run_path: Path) -> dict[str, Any]:
    """Summary, history keys and images of an offline W&B run directory (``offline-run-*``), without syncing.

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
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            history_keys.update(item.key or "/".join(item.nested_key) for item in rec.history.item)
    images = sorted(str(p.relative_to(run_path)) for p in (run_path / "files" / "media").rglob("*.png"))
    return {"summary": summary, "history_keys": sorted(history_keys), "images": images}
