"""ToMe and ToDo math: plans round-trip on odd grids, neutral settings are exact, seeds repeat, merging exact
duplicates (or pooling constant cells) leaves attention unchanged, text tokens of joint attention pass untouched."""
import math

import pytest
import torch
import torch.nn.functional as F

from attention_lab.attention.address import BlockAddress
from attention_lab.attention.effect import AttnCall
from attention_lab.attention.layout import bhnd_to_bnhd
from attention_lab.attention.merge import (TokenDownsample, TokenMerge, bipartite_plan, destinations,
                                           grid_downsample, merge_call, plan_seed, pool_grid, pooled_size)
from attention_lab.attention.schedule import Schedule
from attention_lab.attention.site import COND, UNCOND, Site, Span, TokenLayout

ODD = [((1, 15, 17), (2, 2)), ((1, 9, 33), (3, 1)), ((1, 15, 17), (3, 1)), ((1, 9, 33), (2, 2)),
       ((3, 5, 7), (2, 2))]


def make_site(grid=(1, 8, 8), txt=0, txt_first=True, kind="self", pixel_area=None, chunks=(COND,), sigma=1.0,
              block=BlockAddress("input", 1, 0)):
    n_img = math.prod(grid)
    n = n_img + txt
    img, text = (Span(txt, n), Span(0, txt)) if txt_first else (Span(0, n_img), Span(n_img, n))
    text = text if txt else None
    layout = TokenLayout(n, n, grid, img, img, text, text, pixel_area)
    return Site("test", kind, block, 2, 4, layout, sigma, None, chunks, {"batch_per_chunk": 1})


def sdpa(call: AttnCall) -> torch.Tensor:
    bias = None if call.bias is None else call.bias.to(call.q.dtype)
    return bhnd_to_bnhd(F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=bias))


def random_call(site, batch=2, heads=2, dim=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    n = site.layout.n_q
    return AttnCall(*(torch.randn(batch, heads, n, dim, generator=g, dtype=dtype) for _ in range(3)))


def cellwise(site, stride, batch=2, heads=2, dim=4, seed=0):
    """A call whose image tokens (q, k, v) are identical within each stride cell of the grid; text tokens random."""
    f, h, w = site.layout.grid
    call = random_call(site, batch, heads, dim, seed)
    rows, cols = torch.arange(h) // stride[0] * stride[0], torch.arange(w) // stride[1] * stride[1]
    first = (rows[:, None] * w + cols[None, :]).flatten()  # each token -> the top-left token of its cell
    index = (torch.arange(f)[:, None] * h * w + first[None, :]).flatten() + site.layout.img_q.start
    span = site.layout.img_q.as_slice()

    def fill(t):
        t = t.clone()
        t[:, :, span] = t[:, :, index]
        return t
    return AttnCall(fill(call.q), fill(call.k), fill(call.v))


def plan_for(grid, stride, ratio=0.5, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(batch, math.prod(grid), 6, generator=g)
    return metric, bipartite_plan(metric, grid, stride, ratio, torch.Generator().manual_seed(seed))


# -- the plan -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,stride", ODD)
def test_one_destination_per_cell_including_border_cells(grid, stride):
    f, h, w = grid
    dst = destinations(grid, stride, torch.Generator().manual_seed(3))
    assert dst.shape == (f, math.ceil(h / stride[0]) * math.ceil(w / stride[1]))
    cells = (dst // w // stride[0]) * math.ceil(w / stride[1]) + (dst % w) // stride[1]
    for frame in cells:
        assert sorted(frame.tolist()) == list(range(dst.shape[1]))


@pytest.mark.parametrize("grid,stride", ODD)
def test_merge_then_unmerge_restores_count_layout_and_group_means(grid, stride):
    x, plan = plan_for(grid, stride, ratio=0.6)
    f, t = grid[0], grid[1] * grid[2]
    merged = plan.merge(x)
    assert plan.r == min(int(0.6 * t), t - plan.dst.shape[1])
    assert merged.shape == (2, f * (t - plan.r), 6) == (2, plan.merged_tokens, 6)
    back = plan.unmerge(merged)
    assert back.shape == x.shape
    expected = x.clone().view(2 * f, t, 6)
    frames = x.view(2 * f, t, 6)
    for i in range(2 * f):  # reference: every member of a group gets the group's mean, kept sources themselves
        for slot, d in enumerate(plan.dst[i].tolist()):
            members = [d] + [s for s, j in zip(plan.src[i].tolist(), plan.into[i].tolist()) if j == slot]
            expected[i, members] = frames[i, members].mean(0)
    torch.testing.assert_close(back, expected.view_as(x))
    assert torch.equal(plan.sizes().sum(-1), torch.full((2,), float(f * t)))


def test_ratio_zero_plan_is_the_identity():
    x, plan = plan_for((1, 15, 17), (2, 2), ratio=0.0)
    assert plan.r == 0 and plan.merge(x) is x and plan.unmerge(x) is x


def test_ratio_is_capped_at_the_number_of_sources():
    _, plan = plan_for((1, 15, 17), (2, 2), ratio=0.95)
    assert plan.r == 255 - 72 and plan.unm.shape[1] == 0


def test_stride_larger_than_the_grid_is_clamped_to_one_destination_per_frame():
    x, plan = plan_for((2, 3, 5), (8, 8), ratio=0.5)
    assert plan.dst.shape == (4, 1) and plan.r == 7
    assert plan.unmerge(plan.merge(x)).shape == x.shape


def test_seeded_plans_repeat_bit_identically_and_seeds_differ():
    _, a = plan_for((1, 15, 17), (2, 2), seed=5)
    _, b = plan_for((1, 15, 17), (2, 2), seed=5)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("unm", "src", "dst", "into"))
    dst = [destinations((1, 15, 17), (2, 2), torch.Generator().manual_seed(s)) for s in range(3)]
    assert not torch.equal(dst[0], dst[1]) and not torch.equal(dst[1], dst[2])
    site = make_site()
    assert plan_seed(0, site) == plan_seed(0, site) != plan_seed(1, site)
    assert plan_seed(0, site) != plan_seed(0, make_site(block=BlockAddress("input", 2, 0)))


# -- the ToMe effect ------------------------------------------------------------------------------------------------
def test_tome_ratio_zero_is_neutral_and_exact():
    site = make_site(grid=(1, 15, 17))
    call = random_call(site)
    eff = TokenMerge(Schedule(), ratio=0.0)
    assert eff.neutral and not eff.applies(site)
    assert torch.equal(eff.attend(call, site, sdpa), sdpa(call))
    assert TokenMerge(Schedule(), ratio=0.5, stride=(1, 1)).neutral


def test_tome_repeats_bit_identically_and_changes_with_the_seed():
    site = make_site(grid=(1, 15, 17))
    call = random_call(site)
    a, b = (TokenMerge(Schedule(), 0.5, seed=7).attend(call, site, sdpa) for _ in range(2))
    c = TokenMerge(Schedule(), 0.5, seed=8).attend(call, site, sdpa)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == sdpa(call).shape and not torch.equal(a, sdpa(call))


@pytest.mark.parametrize("grid,stride,proportional,txt", [
    ((1, 8, 8), (2, 2), False, 0), ((1, 8, 8), (2, 2), True, 5), ((1, 15, 17), (2, 2), True, 5),
    ((1, 9, 33), (3, 1), True, 0), ((2, 5, 7), (2, 2), True, 5)])
def test_merging_exact_duplicates_leaves_attention_unchanged(grid, stride, proportional, txt):
    # Every image token of a stride cell is the same (q, k, v): merging the cell into its destination and
    # copying the output back is exact. Without proportional attention (log size) only when every key is
    # duplicated equally (no text keys, even cells): the factor then cancels in the softmax.
    site = make_site(grid=grid, kind="joint" if txt else "self", txt=txt)
    call = cellwise(site, stride)
    eff = TokenMerge(Schedule(), ratio=0.95, stride=stride, proportional=proportional)
    calls = []
    out = eff.attend(call, site, lambda c: (calls.append(c), sdpa(c))[1])
    n_cells = grid[0] * math.ceil(grid[1] / stride[0]) * math.ceil(grid[2] / stride[1])
    assert calls[0].k.shape[2] == n_cells + txt  # every source merged: one token per cell, plus the text
    torch.testing.assert_close(out, sdpa(call))


def test_uneven_duplicates_need_proportional_attention():
    site = make_site(grid=(1, 15, 17))
    call = cellwise(site, (2, 2))
    out = TokenMerge(Schedule(), ratio=0.95).attend(call, site, sdpa)
    assert not torch.allclose(out, sdpa(call))


@pytest.mark.parametrize("txt_first", [True, False])
def test_tome_text_tokens_of_joint_attention_pass_untouched(txt_first):
    site = make_site(grid=(1, 9, 11), kind="joint", txt=6, txt_first=txt_first)
    call = random_call(site)
    txt = site.layout.txt_q.as_slice()
    call = call.with_(q=call.q.clone(), k=call.k.clone(), v=call.v.clone())
    for t, value in ((call.q, 100.0), (call.k, -50.0), (call.v, 7.0)):
        t[:, :, txt] = value + torch.arange(6, dtype=t.dtype)[:, None]
    seen = []

    def backend(c):
        seen.append(c)
        return sdpa(c)
    out = TokenMerge(Schedule(), ratio=0.5).attend(call, site, backend)
    inner = seen[0]
    n_small = inner.q.shape[2]
    assert n_small < site.layout.n_q
    small_txt = slice(0, 6) if txt_first else slice(n_small - 6, n_small)
    for name in ("q", "k", "v"):
        assert torch.equal(getattr(inner, name)[:, :, small_txt], getattr(call, name)[:, :, txt])
    assert torch.equal(out[:, txt], sdpa(inner)[:, small_txt])


def test_tome_merges_a_bias_by_max_and_a_zero_bias_changes_nothing():
    site = make_site(grid=(1, 9, 11), kind="joint", txt=4)
    call = random_call(site)
    n = site.layout.n_q
    plain = TokenMerge(Schedule(), 0.5).attend(call, site, sdpa)
    zero = TokenMerge(Schedule(), 0.5).attend(call.with_(bias=torch.zeros(1, 1, n, n, dtype=call.q.dtype)), site,
                                               sdpa)
    torch.testing.assert_close(zero, plain)
    eff = TokenMerge(Schedule(), 0.5)
    plan = eff.plan(call, site)
    bias = torch.zeros(1, 1, 1, n, dtype=call.q.dtype)
    bias[..., 4:] = float("-inf")  # every image key masked
    small = merge_call(plan, call.with_(bias=bias), site.layout.img_q)
    assert small.bias.shape == (2, 1, 1, small.k.shape[2])
    assert small.bias[..., 4:].eq(float("-inf")).all() and small.bias[..., :4].eq(0).all()


def test_tome_proportional_bias_is_log_size_on_image_keys_only():
    site = make_site(grid=(1, 6, 6), kind="joint", txt=3)
    call = random_call(site)
    plan = TokenMerge(Schedule(), 0.5).plan(call, site)
    small = merge_call(plan, call, site.layout.img_q, proportional=True)
    assert small.bias.shape == (2, 1, 1, 3 + plan.merged_tokens)
    assert small.bias[..., :3].eq(0).all()
    torch.testing.assert_close(small.bias[:, 0, 0, 3:].exp().sum(-1), torch.full((2,), 36.0, dtype=torch.float64))


def test_tome_applies_to_self_and_joint_at_full_resolution_levels_only():
    eff1, eff2 = TokenMerge(Schedule(), 0.5), TokenMerge(Schedule(), 0.5, max_downsample=2)
    area = 16 * 16 * 64  # a 16x16 latent, VAE scale 8
    full, half, quarter = (make_site(grid=(1, s, s), pixel_area=area) for s in (16, 8, 4))
    assert [grid_downsample(s, 8) for s in (full, half, quarter)] == [1, 2, 4]
    assert eff1.applies(full) and not eff1.applies(half)
    assert eff2.applies(half) and not eff2.applies(quarter)
    assert not eff1.applies(make_site(grid=(1, 16, 16), pixel_area=area, kind="cross"))
    odd = 15 * 17 * 64  # odd latent: levels 15x17, 8x9, 4x5
    assert [grid_downsample(make_site(grid=g, pixel_area=odd), 8) for g in ((1, 15, 17), (1, 8, 9), (1, 4, 5))] \
        == [1, 2, 4]
    dit = make_site(grid=(1, 8, 8), pixel_area=16 * 16 * 64, kind="joint", txt=3)  # patch 2: 16 px per token
    assert grid_downsample(dit, 16) == 1 and eff1.applies(dit) is False
    assert TokenMerge(Schedule(), 0.5, token_pixels=16).applies(dit)


def test_tome_applies_per_batch_item():
    site = make_site(grid=(1, 8, 8), chunks=(UNCOND, COND))
    call = random_call(site)
    out = TokenMerge(Schedule(apply_to="cond"), 0.5).attend(call, site, sdpa)
    full = sdpa(call)
    torch.testing.assert_close(out[0], full[0])
    assert not torch.allclose(out[1], full[1])


def test_tome_refuses_bad_settings():
    for kwargs in (dict(ratio=1.0), dict(ratio=-0.1), dict(ratio=0.5, stride=(0, 2)),
                   dict(ratio=0.5, max_downsample=0)):
        with pytest.raises(ValueError):
            TokenMerge(Schedule(), **kwargs)


# -- ToDo -----------------------------------------------------------------------------------------------------------
def test_todo_factor_one_is_neutral_and_exact():
    site = make_site(grid=(1, 15, 15))
    call = random_call(site)
    eff = TokenDownsample(Schedule(), factor=1)
    assert eff.neutral and not eff.applies(site)
    assert torch.equal(eff.attend(call, site, sdpa), sdpa(call))
    with pytest.raises(ValueError):
        TokenDownsample(Schedule(), factor=0)


@pytest.mark.parametrize("txt", [0, 5])
def test_todo_on_constant_cells_equals_attention_to_one_key_per_cell(txt):
    # Keys and values constant over each 2x2 cell: pooling them is attending one copy per cell. With no text
    # keys that is also plain attention (the duplication factor cancels in the softmax).
    site = make_site(grid=(2, 8, 6), kind="joint" if txt else "self", txt=txt)
    call = cellwise(site, (2, 2))
    out = TokenDownsample(Schedule(), factor=2).attend(call, site, sdpa)
    corners = [txt + (f * 8 + y) * 6 + x for f in range(2) for y in range(0, 8, 2) for x in range(0, 6, 2)]
    keys = list(range(txt)) + corners  # text first
    torch.testing.assert_close(out, sdpa(call.with_(k=call.k[:, :, keys], v=call.v[:, :, keys])))
    if not txt:
        torch.testing.assert_close(out, sdpa(call))


@pytest.mark.parametrize("txt_first", [True, False])
def test_todo_non_divisible_grid_keeps_shapes_and_text_keys(txt_first):
    site = make_site(grid=(1, 15, 15), kind="joint", txt=4, txt_first=txt_first)
    call = random_call(site)
    seen = []
    out = TokenDownsample(Schedule(), factor=2).attend(call, site, lambda c: (seen.append(c), sdpa(c))[1])
    inner = seen[0]
    assert pooled_size((1, 15, 15), 2) == 64
    assert inner.k.shape[2] == inner.v.shape[2] == 8 * 8 + 4
    assert torch.equal(inner.q, call.q) and out.shape == sdpa(call).shape and torch.isfinite(out).all()
    txt_old = site.layout.txt_k.as_slice()
    txt_new = slice(0, 4) if txt_first else slice(64, 68)
    assert torch.equal(inner.k[:, :, txt_new], call.k[:, :, txt_old])


def test_todo_border_cells_average_only_their_tokens():
    x = torch.arange(15.0).view(1, 15, 1)  # a 3x5 grid
    pooled = pool_grid(x, 1, Span(0, 15), (1, 3, 5), 2)
    assert pooled.flatten().tolist() == [3.0, 5.0, 6.5, 10.5, 12.5, 14.0]


def test_todo_pools_a_key_bias_by_max():
    site = make_site(grid=(1, 4, 4), kind="joint", txt=2)
    call = random_call(site)
    bias = torch.zeros(1, 1, 1, 18, dtype=call.q.dtype)
    bias[..., 2:4] = float("-inf")  # the first two image tokens: half of the first cell
    bias[..., 6:8] = float("-inf")  # ... and the other half: the whole first cell is masked
    bias[..., 10] = float("-inf")  # one token of the third cell: that cell stays visible
    seen = []
    TokenDownsample(Schedule(), 2).attend(call.with_(bias=bias), site, lambda c: (seen.append(c), sdpa(c))[1])
    assert seen[0].bias.flatten().tolist() == [0.0, 0.0, float("-inf"), 0.0, 0.0, 0.0]
