"""The flat node-state format: every dtype and shape back bit for bit, damaged files refused by name, and a site
group's state through a file in it (and in the torch.save format of earlier versions) trains on the same."""
from __future__ import annotations

import io

import pytest
import torch

from fedgan.engine import build_site
from fedgan.flat_state import FlatStateError, is_flat, read_flat, read_flat_file, write_flat
from fedgan.site_group import SiteGroup, _saved_form
from tests.conftest import tiny_scenario
from tests.test_site_group import assert_same_replies, batches


def flat_bytes(tree) -> bytes:
    buffer = io.BytesIO()
    written = write_flat(buffer, tree)
    assert written == len(buffer.getvalue())
    return buffer.getvalue()


def test_a_tree_of_every_dtype_comes_back_bit_for_bit():
    # Prepare
    generator = torch.Generator().manual_seed(0)
    tree = {
        "float": torch.randn(3, 5, generator=generator),
        "bf16": torch.randn(7, generator=generator).to(torch.bfloat16),
        "double": torch.tensor(2.5, dtype=torch.float64),  # 0-dim
        "ids": torch.tensor([4, 9, 2**40], dtype=torch.int64),
        "rng": torch.Generator().manual_seed(3).get_state(),  # uint8, an odd length
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        "sites": [{"steps": 17, "name": "a", "ratio": 0.5, "none": None, "flag": True}, (1, 2)],
    }

    # Execute
    back = read_flat(flat_bytes(tree))

    # Assert
    for key in ("float", "bf16", "double", "ids", "rng", "mask", "empty", "strided"):
        assert back[key].dtype == tree[key].dtype and back[key].shape == tree[key].shape, key
        assert torch.equal(back[key], tree[key]), key
    assert back["sites"] == [{"steps": 17, "name": "a", "ratio": 0.5, "none": None, "flag": True}, [1, 2]]


def test_tensors_are_naturally_aligned_and_bytes_input_is_not_shared():
    data = flat_bytes({"a": torch.ones(3, dtype=torch.uint8), "b": torch.ones(5), "c": torch.ones(2).double()})
    back = read_flat(data)
    for tensor in back.values():
        assert tensor.data_ptr() % tensor.element_size() == 0
    back["b"] += 1  # views of a private copy: the caller's bytes are left alone
    assert torch.equal(read_flat(data)["b"], torch.ones(5))


@pytest.mark.parametrize("cut", ["header length", "header", "tensor"])
def test_a_truncated_state_is_refused_with_what_is_missing(cut):
    data = flat_bytes({"w": torch.randn(100)})
    end = {"header length": 10, "header": 20, "tensor": len(data) - 300}[cut]
    with pytest.raises(FlatStateError, match="truncated"):
        read_flat(data[:end])


def test_a_mapped_file_is_copy_on_write(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(flat_bytes({"w": torch.ones(4)}))
    state = read_flat_file(path)
    state["w"] += 1
    assert torch.equal(state["w"], torch.full((4,), 2.0))
    assert torch.equal(read_flat_file(path)["w"], torch.ones(4))  # the file is untouched


def test_another_format_and_unstorable_values_are_refused():
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    assert not is_flat(buffer.getvalue())
    with pytest.raises(FlatStateError, match="not a flat state"):
        read_flat(buffer.getvalue())
    with pytest.raises(TypeError, match="set"):
        write_flat(io.BytesIO(), {"ids": {1, 2}})
    with pytest.raises(TypeError, match="keys must be strings"):
        write_flat(io.BytesIO(), {1: torch.ones(1)})


@pytest.mark.parametrize("file_format", ["flat", "torch.save (earlier versions)"])
def test_a_group_state_file_loads_into_a_fresh_group_that_then_trains_the_same(tmp_path, file_format):
    # Prepare: a group that has trained, forgotten and excluded items
    scenario = tiny_scenario()
    group = SiteGroup([build_site(scenario, j) for j in range(3)], "loop")
    rounds = batches(3)
    fake, labels = next(rounds)
    group.train_round(fake, labels, 1)
    site = group.sites[1]
    ids = site.shard.dataset.ids.numpy()
    site.shard.forget(ids[:2])
    site.shard.exclude(ids[2:4])
    path = tmp_path / "state.pt"
    with open(path, "wb") as handle:
        if file_format == "flat":
            group.save_state(handle)
        else:
            torch.save(_saved_form(group.group_state(), on_cpu=True), handle)
    assert is_flat(path.read_bytes()) == (file_format == "flat")

    # Execute
    fresh = SiteGroup([build_site(scenario, j) for j in range(3)], "loop")
    fresh.load_state_file(path)
    fake, labels = next(rounds)

    # Assert: the same replies, the same id sets, and the file read on its own gives the saved tensors
    assert_same_replies(group.train_round(fake, labels, 2), fresh.train_round(fake, labels, 2))
    assert fresh.sites[1].shard.forgotten == site.shard.forgotten
    assert fresh.sites[1].shard.excluded == site.shard.excluded
    if file_format == "flat":
        assert set(read_flat_file(path)) == {"params", "exp_avg", "exp_avg_sq", "adam_steps", "sites"}
    else:
        assert read_flat_file(path) is None
