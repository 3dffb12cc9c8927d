"""A node's state files: replaced atomically, snapshots that later saves do not touch, restore and discard."""
from __future__ import annotations

import pytest

from fedgan.node_state import NodeStateStore, node_folder


def test_a_snapshot_keeps_the_state_of_its_moment_through_later_saves(tmp_path):
    # Prepare
    store = NodeStateStore(node_folder(tmp_path, 3))
    store.save(b"round 1")

    # Execute
    store.snapshot("before-1")
    store.save(b"round 2")
    store.snapshot("after-cascaded-1")
    store.save(b"round 3")

    # Assert
    assert store.load() == b"round 3"
    assert store.load("before-1") == b"round 1" and store.load("after-cascaded-1") == b"round 2"
    assert store.folder == tmp_path / "node-3"


def test_restore_makes_a_snapshot_current_and_discard_drops_it(tmp_path):
    store = NodeStateStore(tmp_path / "node-0")
    store.save(b"a")
    store.snapshot("t")
    store.save(b"b")
    store.restore("t")
    assert store.load() == b"a"
    store.save(b"c")  # saving after a restore leaves the snapshot as it was
    assert store.load("t") == b"a"
    store.discard("t")
    store.discard("t")  # twice is fine
    with pytest.raises(FileNotFoundError):
        store.load("t")
    assert sorted(p.name for p in store.folder.iterdir()) == ["state.pt"]  # no temporary file left behind


def test_tags_of_any_text_are_safe_file_names(tmp_path):
    store = NodeStateStore(tmp_path / "node-1")
    store.save(b"x")
    store.snapshot("../../etc/passwd")
    assert store.path("../../etc/passwd").parent == store.folder


def test_restoring_a_snapshot_that_is_still_current_leaves_no_temporary_file(tmp_path):
    # The snapshot and the current state are then two names of one file: the rename in between does nothing.
    store = NodeStateStore(tmp_path / "node-0")
    store.save(b"a")
    store.snapshot("t")
    store.restore("t")
    assert store.load() == b"a"
    assert sorted(p.name for p in store.folder.iterdir()) == [store.path("t").name, "state.pt"]
