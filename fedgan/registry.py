"""One registry helper for everything selectable by name in a scenario.

Aggregators, unlearning methods, datasets, partitioners, metrics and model architectures are each a `Registry`:
entries are added with the `register` decorator (adding one is one file and one line), looked up by name with an
error that lists the valid names, and a name registered twice is a programming error that fails at import.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is used in error messages, e.g. ``"aggregator"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding the decorated object under `name`; a second entry of the same name raises ValueError."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> None:
        """Add `entry` under `name` (ValueError if the name is taken)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def __getitem__(self, name: str) -> T:
        """The entry called `name`; KeyError naming the valid names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def get(self, name: str) -> T | None:
        """The entry called `name`, or None."""
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs in name order."""
        return [(name, self._entries[name]) for name in self.names()]
