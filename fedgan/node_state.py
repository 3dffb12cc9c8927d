"""Where a node's sites keep their lasting state between messages: files on the node's own disk.

A node (a Flower SuperNode hosting one or more sites) must keep its sites' discriminators, Adam states, random
streams and forgotten ids from one message to the next. Kept in Flower's `Context.state`, that state would travel
with every message in both directions (the simulation engine pickles the whole Context per message), which grows
with the sites per node and stops site groups from scaling; and a Context is lost with its run. So the state lives
in files, one folder per node, written atomically (temporary file + rename): the current state and one file per
snapshot tag. The message carries nothing of it; the node's Context keeps only the folder and a version number,
which lets a worker process reuse the copy it already holds in memory when it is still current.

Snapshots are hard links to the immutable file of the moment (a state file is never rewritten, only replaced), so
taking one costs nothing however large the state is. docs/engines.md ("Where a node's state lives") has the
measured cost.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from fedgan.storage import atomic_write_bytes, atomic_write_with

CURRENT = "state"


def _file_name(tag: str | None) -> str:
    """The file of the current state, or of a snapshot (tags are hashed: any string is a safe name)."""
    if tag is None:
        return f"{CURRENT}.pt"
    return f"snapshot-{hashlib.sha256(tag.encode('utf-8')).hexdigest()[:16]}.pt"


class NodeStateStore:
    """One node's state files in `folder` (created on first write)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, tag: str | None = None) -> Path:
        """The file holding the current state (tag None) or the snapshot under `tag`."""
        return self.folder / _file_name(tag)

    def save(self, data: bytes) -> None:
        """Replace the current state (atomically: a reader sees the old state or the new, never half of one)."""
        atomic_write_bytes(self.path(), data, durable=False)

    def save_with(self, write: Callable[[BinaryIO], Any]) -> None:
        """Replace the current state with what `write(handle)` writes (streamed: no copy of it in memory)."""
        atomic_write_with(self.path(), write, durable=False)

    def load(self, tag: str | None = None) -> bytes:
        """The current state's bytes (or a snapshot's); FileNotFoundError naming the file when there is none."""
        return self.path(tag).read_bytes()

    def snapshot(self, tag: str) -> None:
        """Keep the current state under `tag` (a hard link: no copy)."""
        _link_over(self.path(), self.path(tag))

    def restore(self, tag: str) -> None:
        """Make the state kept under `tag` current again."""
        _link_over(self.path(tag), self.path())

    def discard(self, tag: str) -> None:
        """Drop the state kept under `tag` (nothing happens when there is none)."""
        self.path(tag).unlink(missing_ok=True)


def _link_over(source: Path, target: Path) -> None:
    """`target` becomes another name of `source`'s file, atomically replacing whatever `target` was."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # a file system without hard links: copy instead
        temporary.write_bytes(source.read_bytes())
    os.replace(temporary, target)
    # rename() between two names of one file does nothing (POSIX) and leaves the temporary name behind: the
    # target already was the source (a restore right after its snapshot).
    temporary.unlink(missing_ok=True)


def node_folder(root: str | os.PathLike[str], partition_id: int) -> Path:
    """The folder of node `partition_id` under a run's node-state root."""
    return Path(root) / f"node-{partition_id}"
