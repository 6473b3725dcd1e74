"""Read an offline W&B run's ``run-*.wandb`` file back (a LevelDB-style log of protobuf records)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """All records of a ``.wandb`` file, parsed as ``wandb_internal_pb2.Record``."""
    data, records, pending, offset = path.read_bytes(), [], b"", _HEADER  # file header: b":W&B" + version
    while offset + _HEADER <= len(data):
        if _BLOCK - offset % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            offset += _BLOCK - offset % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + _HEADER])
        chunk = data[offset + _HEADER : offset + _HEADER + length]
        offset += _HEADER + length
        if kind in (_FULL, _LAST):
            records.append(pending + chunk)
            pending = b""
        elif kind in (_FIRST, _MIDDLE):
            pending += chunk
        else:
            break
    parsed = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def run_config(records: list[Any]) -> dict[str, Any]:
    """The run config (merged updates), top-level keys to JSON values."""
    config: dict[str, Any] = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return config


def history(records: list[Any]) -> list[dict[str, Any]]:
    """One dict per logged history row, keys joined with '.' for nested values."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows
