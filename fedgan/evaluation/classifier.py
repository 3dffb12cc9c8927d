"""The evaluator: a small LeNet-style classifier trained once per dataset, cached, then used to measure GANs.

docs/methods.md, Measuring a GAN without downloads: with no downloads allowed, there is no Inception network, so
every GAN metric looks at
images through this net instead: its penultimate activations feed FID_LeNet and KID, its predictions feed the class
histogram, class coverage, the Inception-Score analogue and label fidelity (see `metrics.py`). Its test accuracy and
the hash of its weights travel with every result, so a number says which yardstick measured it.

On a mixed dataset (items tagged with a `source`, e.g. MNIST digits and Fashion-MNIST garments sharing labels 0-9)
the net is trained on modes, mode = source * num_classes + label (20 classes for the hard split), so it can tell a
generated "3" that is a digit from one that is a dress. `Evaluator.logits` still returns label logits (log-sum-exp
over sources), so every label metric reads the same; `Evaluator.predict_modes` gives the mode.
"""
from __future__ import annotations

import hashlib
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedgan.errors import DataError
from fedgan.storage import atomic_torch_save, cache_dir

SUPPORTED_SHAPES = ((1, 28, 28), (3, 32, 32))
FEATURE_DIM = 128
# Bump when the architecture or the training recipe changes, so stale cached evaluators are not reused.
RECIPE_VERSION = 1
BATCH_SIZE = 128
EVAL_BATCH_SIZE = 1000
PEAK_LEARNING_RATE = 3e-3


class EvaluatorNet(nn.Module):
    """conv16-BN-pool, conv32-BN-pool, FC128, FC num_classes: a LeNet for (1,28,28) or (3,32,32) inputs in [-1, 1].

    Sized for the CPU budget: conv32-conv64 gains < 0.5 point on Fashion-MNIST at twice the training time;
    batch norm is what lets 4 epochs clear 90 %.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        if tuple(image_shape) not in SUPPORTED_SHAPES:
            raise DataError("image_shape", f"got {tuple(image_shape)}", f"expected one of {SUPPORTED_SHAPES}")
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1, bias=False),  # (N,16,H,W)
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N,16,H/2,W/2)
            nn.Conv2d(16, 32, 3, padding=1, bias=False),  # (N,32,H/2,W/2)
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N,32,H/4,W/4)
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(32 * (height // 4) * (width // 4), feature_dim),  # (N,feature_dim)
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(feature_dim, num_classes))  # (N,num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (N, feature_dim), the FID_LeNet embedding."""
        assert x.shape[1:] == self.image_shape, f"expected (N,{self.image_shape}), got {tuple(x.shape)}"
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes)."""
        return self.head(self.features(x))


@dataclass
class Evaluator:
    """A trained `EvaluatorNet` plus what identifies it: test accuracy, weight hash, dataset key."""

    net: EvaluatorNet
    accuracy: float  # label accuracy on the test split
    num_classes: int  # labels
    feature_dim: int
    sha256: str
    dataset_key: str
    train_seconds: float
    from_cache: bool = False
    num_sources: int = 1  # > 1: the net's outputs are modes (source * num_classes + label)
    mode_accuracy: float | None = None  # mode (source and label) accuracy on the test split, mixed datasets only

    @property
    def device(self) -> torch.device:
        """Where the net's weights live; inputs are moved there batch by batch."""
        return next(self.net.parameters()).device

    @torch.no_grad()
    def _batched(self, images: torch.Tensor, fn_name: str) -> torch.Tensor:
        """Run `net.<fn_name>` over `images` in eval mode, a batch at a time, results back on the input's device."""
        self.net.eval()
        fn = getattr(self.net, fn_name)
        outputs = [fn(batch.to(self.device, torch.float32)) for batch in images.split(EVAL_BATCH_SIZE)]
        if not outputs:
            return torch.empty(0, self.feature_dim if fn_name == "features" else self.num_classes * self.num_sources)
        return torch.cat(outputs).to(images.device)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (N, num_classes) for images in [-1, 1] (summed over sources on a mixed dataset)."""
        return label_logits(self._batched(images, "forward"), self.num_classes)

    def predict_modes(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted mode, source * num_classes + label (int64, N); equals the label on a single-source dataset."""
        return self._batched(images, "forward").argmax(dim=1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted class (int64, N) for images in [-1, 1]."""
        return self.logits(images).argmax(dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim) for images in [-1, 1]."""
        return self._batched(images, "features")


def label_logits(mode_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, S * C) mode logits -> (N, C) label logits: log Σ_s exp(mode logit), the label's log-probability + const."""
    return mode_logits.view(len(mode_logits), -1, num_classes).logsumexp(dim=1)


def state_dict_sha256(net: nn.Module) -> str:
    """SHA-256 over parameter names and raw tensor bytes, in state-dict order (stable, unlike pickle bytes)."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Short hash of a split: its size, every 1000th image and all labels (cheap, yet catches a different dataset)."""
    digest = hashlib.sha256(str((tuple(images.shape), str(images.dtype))).encode())
    digest.update(images[::1000].detach().cpu().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def evaluator_cache_path(
    dataset_key: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int,
    epochs: int,
    cache: Path | None = None,
) -> Path:
    """Cache file `<dataset_key>-<hash>.pt`; the hash covers everything that changes the trained weights."""
    recipe = (
        RECIPE_VERSION,
        num_classes,
        tuple(train_images.shape[1:]),
        epochs,
        seed,
        data_fingerprint(train_images, train_labels),
        data_fingerprint(test_images, test_labels),
    )
    key_hash = hashlib.sha256(repr(recipe).encode()).hexdigest()[:12]
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_key)
    folder = Path(cache) if cache is not None else cache_dir("evaluators")
    return folder / f"{safe_key}-{key_hash}.pt"


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int, split: str) -> None:
    """One clear error per malformed split, before any training time is spent."""
    if images.dim() != 4 or tuple(images.shape[1:]) not in SUPPORTED_SHAPES:
        raise DataError(
            f"{split}_images", f"got shape {tuple(images.shape)}", f"expected (N, *one of {SUPPORTED_SHAPES})"
        )
    if not images.is_floating_point():
        raise DataError(f"{split}_images", f"got dtype {images.dtype}", "pass float images in [-1, 1]")
    if labels.shape != (images.shape[0],):
        raise DataError(f"{split}_labels", f"got shape {tuple(labels.shape)}", f"expected ({images.shape[0]},)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{split}_labels", "label out of range", f"expected labels in [0, {num_classes})")


@torch.no_grad()
def _accuracy(net: EvaluatorNet, images: torch.Tensor, targets: torch.Tensor, device: torch.device,
              num_classes: int | None = None) -> float:
    """Share of `images` whose argmax is the target (eval mode); with `num_classes`, argmax of the label logits."""
    net.eval()
    correct = 0
    for x, y in zip(images.split(EVAL_BATCH_SIZE), targets.split(EVAL_BATCH_SIZE), strict=True):
        out = net(x.to(device))
        out = label_logits(out, num_classes) if num_classes is not None else out
        correct += int((out.argmax(dim=1).cpu() == y.cpu()).sum())
    return correct / max(len(targets), 1)


def train_evaluator_net(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    epochs: int = 4,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvaluatorNet:
    """Train an `EvaluatorNet` with Adam and a one-cycle learning rate; deterministic given `seed` (on CPU).

    The global RNG is forked, so training neither depends on nor disturbs the caller's random state.
    """
    device = torch.device(device)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        net = EvaluatorNet(tuple(train_images.shape[1:]), num_classes).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=PEAK_LEARNING_RATE)
        steps_per_epoch = -(-len(train_images) // BATCH_SIZE)
        # One-cycle: warm-up then anneal to ~0 by the last step; this is what makes 4 epochs enough.
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=PEAK_LEARNING_RATE, total_steps=max(epochs * steps_per_epoch, 1)
        )
        shuffler = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(train_images), generator=shuffler)
            for batch in order.split(BATCH_SIZE):
                x, y = train_images[batch].to(device), train_labels[batch].to(device)
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            if progress:
                print(f"evaluator epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}", file=sys.stderr)
    return net.eval()


def _load_cached(path: Path, image_shape: tuple[int, ...], device: torch.device) -> Evaluator | None:
    """The evaluator stored at `path`, or None when it is missing or does not match its recorded hash."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        num_sources = payload.get("num_sources", 1)
        net = EvaluatorNet(image_shape, payload["num_classes"] * num_sources, payload["feature_dim"])
        net.load_state_dict(payload["state_dict"])
    except Exception as error:  # a cache is disposable: any unreadable file is simply rebuilt
        warnings.warn(f"ignoring unreadable evaluator cache {path}: {error}", stacklevel=3)
        return None
    if state_dict_sha256(net) != payload["sha256"]:
        warnings.warn(f"ignoring evaluator cache {path}: weights do not match their recorded sha256", stacklevel=3)
        return None
    return Evaluator(
        net=net.to(device).eval(),
        accuracy=payload["accuracy"],
        num_classes=payload["num_classes"],
        feature_dim=payload["feature_dim"],
        sha256=payload["sha256"],
        dataset_key=payload["dataset_key"],
        train_seconds=payload["train_seconds"],
        from_cache=True,
        num_sources=num_sources,
        mode_accuracy=payload.get("mode_accuracy"),
    )


def load_or_train_evaluator(
    dataset_key: str,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    epochs: int = 4,
    device: str | torch.device = "cpu",
    cache: Path | None = None,
    progress: bool = False,
    train_sources: torch.Tensor | None = None,
    test_sources: torch.Tensor | None = None,
) -> Evaluator:
    """The evaluator for this dataset: loaded from the cache when one matches, else trained, tested and cached.

    Images are float (N,C,H,W) in [-1, 1], labels int64 (N,). `cache` is a folder overriding
    `cache_dir("evaluators")`. The cache file name hashes the data fingerprint, shape, classes, epochs and seed,
    so a changed input never reuses a stale net. Training on Fashion-MNIST (4 epochs) takes about 40 s on 2 CPU cores
    and reaches about 91 % test accuracy (docs/methods.md, Measuring a GAN without downloads). With
    `train_sources`/`test_sources` (a mixed
    dataset), the net learns modes source * num_classes + label (see the module docstring).
    """
    num_sources = 1
    if train_sources is not None:
        if test_sources is None:
            raise DataError("test_sources", "missing", "pass the sources of both splits, or of neither")
        num_sources = int(max(train_sources.max(), test_sources.max())) + 1
        train_targets = train_sources * num_classes + train_labels
        test_targets = test_sources * num_classes + test_labels
    else:
        train_targets, test_targets = train_labels, test_labels
    num_outputs = num_classes * num_sources
    for split, images, targets in (("train", train_images, train_targets), ("test", test_images, test_targets)):
        _check_inputs(images, targets, num_outputs, split)
    device = torch.device(device)
    path = evaluator_cache_path(
        dataset_key, train_images, train_targets, test_images, test_targets, num_outputs,
        seed=seed, epochs=epochs, cache=cache,
    )
    cached = _load_cached(path, tuple(train_images.shape[1:]), device)
    if cached is not None:
        return cached

    # ---- train, test, store ----
    start = time.perf_counter()
    net = train_evaluator_net(
        train_images, train_targets, num_outputs, seed=seed, epochs=epochs, device=device, progress=progress
    )
    train_seconds = time.perf_counter() - start
    accuracy = _accuracy(net, test_images, test_labels, device, num_classes)
    mode_accuracy = _accuracy(net, test_images, test_targets, device) if num_sources > 1 else None
    evaluator = Evaluator(
        net=net,
        accuracy=accuracy,
        num_classes=num_classes,
        feature_dim=net.feature_dim,
        sha256=state_dict_sha256(net),
        dataset_key=dataset_key,
        train_seconds=train_seconds,
        num_sources=num_sources,
        mode_accuracy=mode_accuracy,
    )
    atomic_torch_save(path, {
        "state_dict": {name: tensor.cpu() for name, tensor in net.state_dict().items()},
        "accuracy": accuracy,
        "mode_accuracy": mode_accuracy,
        "num_classes": num_classes,
        "num_sources": num_sources,
        "feature_dim": net.feature_dim,
        "sha256": evaluator.sha256,
        "dataset_key": dataset_key,
        "train_seconds": train_seconds,
        "seed": seed,
        "epochs": epochs,
        "recipe_version": RECIPE_VERSION,
    })
    if progress:
        print(f"evaluator {dataset_key}: test accuracy {accuracy:.4f} after {train_seconds:.1f} s -> {path}",
              file=sys.stderr)
    return evaluator
