import pytest

from attention_lab.attention.address import BlockAddress, BlockSelector
from attention_lab.attention.schedule import Schedule
from attention_lab.attention.site import COND, UNCOND, Site, TokenLayout


def site(sigma=1.0, chunks=(COND, UNCOND), kind="self", block=BlockAddress("input", 1), per_chunk=2):
    return Site("sd15", kind, block, 8, 40, TokenLayout(16, 16), sigma, None, chunks, {"batch_per_chunk": per_chunk})


def test_sigma_window_inclusive():
    s = Schedule(sigma_start=5.0, sigma_end=1.0)
    assert s.active_at(5.0) and s.active_at(1.0) and s.active_at(3.0)
    assert not s.active_at(5.0001) and not s.active_at(0.999)


@pytest.mark.parametrize("apply_to,chunks,expected", [
    ("both", (COND, UNCOND), None),
    ("cond", (UNCOND, COND), (False, False, True, True)),
    ("uncond", (UNCOND, COND), (True, True, False, False)),
    ("cond", (COND, 2), None),  # extra conds (custom guiders) count as cond
])
def test_items_follow_chunk_order(apply_to, chunks, expected):
    assert Schedule(apply_to=apply_to).items(site(chunks=chunks)) == expected


def test_matches_kind_block_and_chunks():
    s = Schedule(blocks=BlockSelector.parse("input.*"), kinds=frozenset({"cross"}), apply_to="uncond")
    assert s.matches(site(kind="cross"))
    assert not s.matches(site(kind="self"))
    assert not s.matches(site(kind="cross", block=BlockAddress("output", 1)))
    assert not s.matches(site(kind="cross", chunks=(COND,)))


def test_bad_values():
    with pytest.raises(ValueError, match="apply_to"):
        Schedule(apply_to="neither")
    with pytest.raises(ValueError, match="unknown attention kind"):
        Schedule(kinds=frozenset({"diagonal"}))
