"""A site's shard: the items it holds, the ones it has forgotten or set aside, and how its real stream samples.

The partition gives a site its items once (with their global ids). Forgetting deletes items for good (only their
ids are kept, to rebuild the shard after a restart); excluding keeps held items out of the real stream while they
are being unlearned (the substitution of docs/methods.md: retained items take their place). The real stream draws
either uniformly from the active items (``shard``) or a held label uniformly first, then an item of it
(``balanced``). Engine-free and model-free: the discriminator that consumes the batches lives in `fedgan.site`.
"""
from __future__ import annotations

import numpy as np
import torch

from fedgan.datasets import ImageDataset

REAL_SAMPLING = ("shard", "balanced")


class SiteShard:
    """The items of one site, on the site's device, with the bookkeeping of forgetting."""

    def __init__(self, site_id: int, partition_shard: ImageDataset, conditional: bool,
                 device: torch.device | str = "cpu") -> None:
        self.site_id = site_id
        self.conditional = conditional
        self.device = torch.device(device)
        self.forgotten: set[int] = set()  # ids deleted from the shard (only their ids remain, as in the ledger)
        self.excluded: set[int] = set()  # ids held but kept out of the real stream while they are unlearned
        # The partition's shard is the simulator's data source; the current shard is derived from it.
        self._partition_shard = partition_shard
        self._set_items(partition_shard)

    # ---- what the shard holds ----
    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.dataset.image_shape

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def has_real(self) -> bool:
        """Whether the real stream has any item (a site that forgot everything it held has none)."""
        return len(self._active) > 0

    def held_ids(self) -> np.ndarray:
        """Global ids this site holds now (after forgetting)."""
        return self._ids.copy()

    def class_counts(self) -> np.ndarray:
        """Items per class, shape (num_classes,): the n_{j,y} of the aggregation weights (sizes only)."""
        return np.bincount(self.dataset.labels.numpy(), minlength=self.num_classes).astype(np.int64)

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions in the current shard of the given global ids (KeyError naming the first missing id)."""
        index = {int(i): p for p, i in enumerate(self._ids)}
        missing = [int(i) for i in ids if int(i) not in index]
        if missing:
            raise KeyError(f"site {self.site_id} does not hold item {missing[0]}")
        return np.asarray([index[int(i)] for i in ids], dtype=np.int64)

    def items_at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (and labels, for a conditional model) at shard positions."""
        return self.images[positions], (self.labels[positions] if self.conditional else None)

    # ---- forgetting ----
    def exclude(self, ids: np.ndarray) -> None:
        """Keep `ids` out of the real stream from now on: retained items of this site take their place."""
        self.positions_of(ids)
        self.excluded |= {int(i) for i in ids}
        self._refresh_active()

    def forget(self, ids: np.ndarray) -> None:
        """Delete `ids` from the shard for good; only the ids are kept."""
        ids_set = {int(i) for i in ids}
        self.excluded -= ids_set
        self._apply_forgotten(self.forgotten | ids_set)

    def restore_ids(self, forgotten: set[int], excluded: set[int]) -> None:
        """Return to a saved state of forgotten and excluded ids (from a site's persisted state)."""
        if forgotten == self.forgotten and excluded == self.excluded:
            return  # the active positions follow from these two sets alone: nothing to recompute
        self.excluded = set(excluded)
        if forgotten != self.forgotten:
            self._apply_forgotten(forgotten)
        else:
            self._refresh_active()

    def _apply_forgotten(self, forgotten: set[int]) -> None:
        self.forgotten = set(forgotten)
        all_ids = self._partition_shard.ids.numpy()
        keep = np.flatnonzero(~np.isin(all_ids, np.asarray(sorted(forgotten), dtype=np.int64)))
        self._set_items(self._partition_shard.subset(torch.from_numpy(keep)))

    def _set_items(self, dataset: ImageDataset) -> None:
        self.dataset = dataset
        self.images = dataset.float_images().to(self.device)  # decoded once; the shard stays on this site
        self.labels = dataset.labels.to(self.device)
        self._ids = dataset.ids.numpy()
        self._refresh_active()

    def _refresh_active(self) -> None:
        """Positions the real stream samples from: the shard minus excluded items."""
        keep = ~np.isin(self._ids, np.fromiter(self.excluded, dtype=np.int64, count=len(self.excluded)))
        active = np.flatnonzero(keep)
        # For balanced sampling: the active positions sorted by label, with each held label's start and count.
        labels = self.dataset.labels.numpy()
        active = active[np.argsort(labels[active], kind="stable")]
        _, starts, counts = np.unique(labels[active], return_index=True, return_counts=True)
        self._active = torch.from_numpy(active).to(self.device)
        self._label_starts = torch.from_numpy(starts).to(self.device)
        self._label_counts = torch.from_numpy(counts).to(self.device)

    @property
    def active_count(self) -> int:
        """How many items the real stream draws from."""
        return len(self._active)

    # ---- sampling ----
    def sample_real(self, batch: int, rng: torch.Generator, scheme: str = "shard"
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A real batch from the active items: uniformly (``shard``) or label-balanced (``balanced``)."""
        if not self.has_real:
            raise ValueError(f"site {self.site_id} has no retained item to sample")
        if scheme == "balanced":
            label = torch.randint(len(self._label_counts), (batch,), generator=rng).to(self.device)
            within = (torch.rand(batch, generator=rng).to(self.device) * self._label_counts[label]).long()
            pick = self._label_starts[label] + torch.minimum(within, self._label_counts[label] - 1)
        elif scheme == "shard":
            pick = torch.randint(len(self._active), (batch,), generator=rng).to(self.device)
        else:
            raise KeyError(f"unknown real sampling {scheme!r}; use one of {', '.join(REAL_SAMPLING)}")
        return self.items_at(self._active[pick])

    def sample_from(self, positions: torch.Tensor, batch: int, rng: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to `batch` items drawn with replacement among `positions` (e.g. the forget items)."""
        pick = torch.randint(len(positions), (min(batch, len(positions)),), generator=rng).to(self.device)
        return self.items_at(positions[pick])
