"""A flat file format for a tree of tensors: one JSON header, then every tensor's raw bytes (the node-state format).

A node rewrites its sites' state after every message and reloads it whenever its message lands on a worker that
does not hold the current copy (`fedgan.node_state`), so the format's cost sits on every Flower round. `torch.save`
writes a zip archive with one entry per tensor and `torch.load` unpickles it back; for one site's 0.43 MB state that
is about 1.2 ms each way on the 2-core machine, most of it per-entry bookkeeping. Here a state is laid out once as

    MAGIC | header length (8 bytes, little-endian) | JSON header | padding | tensor bytes, each 64-byte aligned

where the header holds the tree with every tensor replaced by ``{"__tensor__": i}`` and, for tensor i, its dtype,
shape and offset. Writing is one header plus one raw write per tensor; reading is one read and a view per tensor
(`torch.frombuffer`: no copy until the caller copies into its own tensors). bench/node_state_cost.py measures it
against torch.save.

Trees hold dicts with string keys, lists, tuples (read back as lists), tensors, and JSON scalars (str, int, float,
bool, None). Files of the older torch.save format are still read (`is_flat` tells them apart), so states written
before this format stay loadable.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any, BinaryIO

import torch

MAGIC = b"FGSTATE1"
ALIGN = 64
_LENGTH = struct.Struct("<Q")
_TENSOR = "__tensor__"


class FlatStateError(ValueError):
    """A file or buffer that is not a complete flat state (truncated, or another format)."""


def is_flat(data: bytes | bytearray | memoryview) -> bool:
    """Whether `data` starts like a flat state (else it is another format, such as torch.save's zip)."""
    return bytes(data[: len(MAGIC)]) == MAGIC


def write_flat(handle: BinaryIO, tree: Any) -> int:
    """Write `tree` to `handle` in the flat format; the number of bytes written. Tensors must be on the CPU."""
    tensors: list[torch.Tensor] = []
    skeleton = _strip(tree, tensors)
    entries, offset = [], 0
    for tensor in tensors:
        if tensor.device.type != "cpu":
            raise ValueError(f"write_flat: a tensor on {tensor.device}; move the state to the CPU first")
        nbytes = tensor.numel() * tensor.element_size()
        entries.append({"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                        "offset": offset})
        offset = _aligned(offset + nbytes)
    header = json.dumps({"tree": skeleton, "tensors": entries}, separators=(",", ":")).encode("utf-8")
    start = _aligned(len(MAGIC) + _LENGTH.size + len(header))
    handle.write(MAGIC + _LENGTH.pack(len(header)) + header + bytes(start - len(MAGIC) - _LENGTH.size - len(header)))
    written = 0
    for tensor, entry in zip(tensors, entries):
        handle.write(bytes(entry["offset"] - written))  # the alignment padding before this tensor
        raw = _raw_bytes(tensor)
        handle.write(raw)
        written = entry["offset"] + len(raw)
    handle.write(bytes(offset - written))
    return start + offset


def read_flat(data: bytes | bytearray | memoryview) -> Any:
    """The tree `write_flat` wrote into `data`. Its tensors are views of `data` (of a copy when `data` is read-only,
    such as bytes): clone them, or copy them into your own tensors, before a writable `data` is reused."""
    view = memoryview(data)
    if view.readonly:  # torch.frombuffer wants writable memory: one copy (cheap next to the tensors' own copies)
        view = memoryview(bytearray(view))
    if not is_flat(view):
        raise FlatStateError("not a flat state (it does not start with the flat format's magic bytes)")
    if len(view) < len(MAGIC) + _LENGTH.size:
        raise FlatStateError("a truncated flat state (no header length)")
    (length,) = _LENGTH.unpack_from(view, len(MAGIC))
    header_end = len(MAGIC) + _LENGTH.size + length
    if header_end > len(view):
        raise FlatStateError(f"a truncated flat state: the header needs {header_end} bytes, there are {len(view)}")
    try:
        header = json.loads(bytes(view[len(MAGIC) + _LENGTH.size:header_end]))
        entries, skeleton = header["tensors"], header["tree"]
    except (ValueError, KeyError, TypeError) as error:
        raise FlatStateError(f"a flat state with a damaged header ({error})") from error
    start = _aligned(header_end)
    tensors = [_tensor_at(view, start, entry) for entry in entries]
    return _fill(skeleton, tensors)


def read_flat_file(path: Any) -> Any:
    """`read_flat` of a file, memory-mapped copy-on-write: its tensors are views of the mapping (pages are read
    when touched, and nothing the caller does to them reaches the file). None when the file is not a flat state."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size < len(MAGIC) or handle.read(len(MAGIC)) != MAGIC:
            return None
        mapping = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
    return read_flat(mapping)  # the tensors keep the mapping alive; it closes when the last of them goes


def _strip(tree: Any, tensors: list[torch.Tensor]) -> Any:
    """`tree` as JSON with each tensor replaced by its index in `tensors` (which this fills)."""
    if isinstance(tree, torch.Tensor):
        tensors.append(tree)
        return {_TENSOR: len(tensors) - 1}
    if isinstance(tree, dict):
        if _TENSOR in tree or not all(isinstance(key, str) for key in tree):
            raise TypeError("write_flat: dict keys must be strings (and not the reserved '__tensor__')")
        return {key: _strip(value, tensors) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_strip(value, tensors) for value in tree]
    if tree is None or isinstance(tree, (str, int, float, bool)):
        return tree
    raise TypeError(f"write_flat: cannot store a {type(tree).__name__} (tensors, dicts, lists and JSON scalars)")


def _fill(skeleton: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        return {key: _fill(value, tensors) for key, value in skeleton.items()}
    if isinstance(skeleton, list):
        return [_fill(value, tensors) for value in skeleton]
    return skeleton


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())  # any dtype, bfloat16 and bool included: its bytes


def _tensor_at(view: memoryview, start: int, entry: dict[str, Any]) -> torch.Tensor:
    dtype = getattr(torch, entry["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise FlatStateError(f"a flat state with an unknown dtype {entry['dtype']!r}")
    shape = tuple(entry["shape"])
    count = 1
    for size in shape:
        count *= size
    offset = start + int(entry["offset"])
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    if offset + nbytes > len(view):
        raise FlatStateError(f"a truncated flat state: a tensor needs bytes up to {offset + nbytes}, "
                             f"there are {len(view)}")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)


def _aligned(offset: int) -> int:
    return (offset + ALIGN - 1) // ALIGN * ALIGN
