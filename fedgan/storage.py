"""Where fedgan keeps files, and how it writes them: always to a temporary file, then an atomic rename.

Nothing already stored (caches, checkpoints, results) may be lost or half-written, so every writer in the
project goes through `atomic_write_bytes` (or its text / torch / json variants).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

CACHE_ENV = "FEDGAN_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$FEDGAN_CACHE`` or ``~/.cache/fedgan``) joined with `parts`, created if missing."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedgan")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename.

    `durable`: fsync the file before the rename (survives a power cut, not only a crash of the process); state that
    is rewritten every round and can be rebuilt passes False.
    """
    return atomic_write_with(path, lambda handle: handle.write(data), durable)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any], durable: bool = True) -> Path:
    """`write(handle)` into a temporary file in `path`'s folder, then an atomic rename onto `path` (for writers that
    stream, such as `torch.save`, without building the whole content in memory first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Text variant of `atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """`torch.save` into memory, then `atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (append-only logs: a crash loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
