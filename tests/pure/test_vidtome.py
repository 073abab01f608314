"""VidToMe math: windows and plans round-trip for odd frame counts, identical frames merge without changing
attention, text tokens pass untouched, frames in the batch keep their count and order, seeds repeat."""
import math

import pytest
import torch

from attention_lab.attention.effect import AttnCall
from attention_lab.attention.merge import merge_call, unmerge_rows
from attention_lab.attention.schedule import Schedule
from attention_lab.attention.site import COND, UNCOND
from attention_lab.attention.vidtome import (BATCH, VideoMerge, frames_to_windows, tokens_after, video_plan,
                                             window_bias, window_groups, window_tokens, windows)

from .test_merge import make_site, random_call, sdpa


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("frames,window", [(5, 2), (3, 3), (7, 4), (4, 1)])
def test_windows_cover_every_frame_once(frames, window):
    spans = windows(frames, window)
    assert [f for start, stop in spans for f in range(start, stop)] == list(range(frames))
    assert all(0 < stop - start <= window for start, stop in spans)


def test_window_tokens_split_destination_and_source_frames_per_row():
    dst, src = window_tokens(2, 5, torch.tensor([2, 4]), 3)
    assert dst.tolist() == [[6, 7, 8], [12, 13, 14]]
    assert src.tolist() == [[9, 10, 11, 12, 13, 14], [6, 7, 8, 9, 10, 11]]


def test_rows_draw_their_own_destination_frames():
    plan = video_plan(torch.randn(16, 4 * 5, 6, generator=gen(4)), 4, 4, 0.5, gen())
    assert len(set((plan.dst[:, 0] // 5).tolist())) > 1


@pytest.mark.parametrize("frames,t,window,ratio", [(5, 15, 2, 0.7), (3, 35, 3, 0.5), (4, 6, 4, 0.9), (2, 9, 2, 0.0)])
def test_plan_round_trips_and_counts_tokens(frames, t, window, ratio):
    metric = torch.randn(2, frames * t, 6, generator=gen(1))
    plan = video_plan(metric, frames, window, ratio, gen())
    assert plan.tokens == frames * t and plan.merged_tokens == tokens_after(frames, t, window, ratio)
    x = torch.randn(2, frames * t, 3, generator=gen(2))
    merged = plan.merge(x)
    assert merged.shape == (2, plan.merged_tokens, 3)
    assert torch.equal(plan.unmerge(plan.merge(torch.ones(2, frames * t, 3))), torch.ones(2, frames * t, 3))
    kept = torch.cat([plan.unm, plan.dst], 1)
    assert torch.equal(plan.unmerge(merged).gather(1, kept[..., None].expand(-1, -1, 3))[:, :plan.unm.shape[1]],
                       x.gather(1, plan.unm[..., None].expand(-1, -1, 3)))


def test_sources_merge_only_into_a_frame_of_their_own_window():
    frames, t = 6, 4
    plan = video_plan(torch.randn(1, frames * t, 5, generator=gen(3)), frames, 2, 0.9, gen())
    dst_frame = plan.dst.gather(1, plan.into) // t
    assert torch.equal(dst_frame // 2, plan.src // t // 2)
    assert not (dst_frame == plan.src // t).any()


def video_site(frames=4, side=3, txt=0, chunks=(COND,), kind="self"):
    return make_site(grid=(frames, side, side), txt=txt, kind=kind, chunks=chunks)


def repeat_frames(call: AttnCall, site) -> AttnCall:
    """Every frame's image tokens replaced by frame 0's (text tokens kept)."""
    f, h, w = site.layout.grid
    span, t = site.layout.img_q, h * w

    def fill(x):
        x = x.clone()
        img = x[:, :, span.as_slice()]
        img.copy_(img[:, :, :t].repeat(1, 1, f, 1))
        return x
    return AttnCall(fill(call.q), fill(call.k), fill(call.v))


@pytest.mark.parametrize("txt", [0, 5])
def test_identical_frames_merge_without_changing_attention(txt):
    site = video_site(frames=4, txt=txt)
    call = repeat_frames(random_call(site), site)
    effect = VideoMerge(Schedule(), ratio=0.9, window=2, proportional=True)
    out = effect.attend(call, site, sdpa)
    assert torch.allclose(out, sdpa(call), atol=1e-10)


def test_text_tokens_are_never_merged():
    site = video_site(frames=3, txt=4)
    call = random_call(site)
    seen = []
    VideoMerge(Schedule(), ratio=0.8, window=3).attend(call, site, lambda c: seen.append(c) or sdpa(c))
    (merged,) = seen
    txt = site.layout.txt_k.as_slice()
    assert torch.equal(merged.k[:, :, txt], call.k[:, :, txt]) and torch.equal(merged.q[:, :, txt], call.q[:, :, txt])
    assert merged.k.shape[2] == 4 + tokens_after(3, 9, 3, 0.8) < call.k.shape[2]


def test_seed_repeats_and_changes_the_plan():
    site = video_site(frames=4, side=4)
    call = random_call(site)
    run = lambda seed: VideoMerge(Schedule(), ratio=0.6, window=2, seed=seed).attend(call, site, sdpa)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_neutral_settings():
    assert VideoMerge(Schedule(), ratio=0.0).neutral and VideoMerge(Schedule(), ratio=0.5, window=1).neutral
    assert not VideoMerge(Schedule(), ratio=0.5).neutral


@pytest.mark.parametrize("frames,window", [(5, 2), (4, 4), (3, 2)])
def test_frames_to_windows_round_trip(frames, window):
    x = torch.randn(2 * frames, 2, 6, 3, generator=gen())
    rows = []
    for first, size, count in window_groups(frames, window):
        w = frames_to_windows(x, frames, first, size, count)
        assert w.shape == (2 * count, 2, size * 6, 3)
        rows.append(w.transpose(1, 2).reshape(2, count * size, 6, 2 * 3))
    back = torch.cat(rows, 1).reshape(2 * frames, 6, 6)
    assert torch.equal(back, x.transpose(1, 2).reshape(2 * frames, 6, 6))


def batch_site(frames, chunks=(COND, UNCOND), side=3):
    site = make_site(grid=(1, side, side), chunks=chunks)
    site.extras["batch_per_chunk"] = frames
    return site


def test_frames_in_the_batch_keep_count_and_order():
    frames = 5
    site = batch_site(frames)
    call = random_call(site, batch=2 * frames)
    effect = VideoMerge(Schedule(), ratio=0.7, window=2, frame_axis=BATCH)
    out = effect.attend(call, site, sdpa)
    assert out.shape == sdpa(call).shape and torch.isfinite(out).all()
    # identical frames attended jointly with proportional attention: each frame's output is its own attention
    same = AttnCall(*(x[:1].repeat(2 * frames, 1, 1, 1) for x in (call.q, call.k, call.v)))
    exact = VideoMerge(Schedule(), ratio=0.95, window=2, frame_axis=BATCH, proportional=True)
    assert torch.allclose(exact.attend(same, site, sdpa), sdpa(same), atol=1e-10)


def test_a_bias_shared_by_all_frames_follows_them_into_the_window():
    bias = torch.arange(6.0).view(1, 1, 1, 6)
    assert torch.equal(window_bias(bias, 3, 6), bias.repeat(1, 1, 1, 3))
    assert window_bias(torch.zeros(1, 2, 6, 6), 2, 6).shape == (1, 2, 12, 12)
    frames = 4
    site = batch_site(frames)
    call = random_call(site, batch=2 * frames)
    same = AttnCall(*(x[:1].repeat(2 * frames, 1, 1, 1) for x in (call.q, call.k, call.v)),
                    torch.zeros(1, 1, 1, 9, dtype=call.q.dtype))
    exact = VideoMerge(Schedule(), ratio=0.95, window=2, frame_axis=BATCH, proportional=True)
    assert torch.allclose(exact.attend(same, site, sdpa), sdpa(same), atol=1e-10)


def test_batch_windows_attend_their_frames_jointly():
    frames = 4
    site = batch_site(frames, chunks=(COND,))
    call = random_call(site, batch=frames)
    seen = []
    effect = VideoMerge(Schedule(), ratio=0.5, window=2, frame_axis=BATCH)
    effect.attend(call, site, lambda c: seen.append(c) or sdpa(c))
    (merged,) = seen
    assert merged.q.shape[0] == 2 and merged.q.shape[2] == 2 * 9 - int(0.5 * 9)


def test_supports_the_layout_it_is_made_for():
    tokens, batch = VideoMerge(Schedule(), 0.5), VideoMerge(Schedule(), 0.5, frame_axis=BATCH)
    assert tokens.supports(video_site()) and not tokens.supports(video_site(frames=1))
    assert batch.supports(batch_site(4)) and not batch.supports(batch_site(1)) and not batch.supports(video_site())
    assert not tokens.supports(video_site(kind="cross"))


def test_bad_settings_raise():
    for kwargs in (dict(ratio=1.0), dict(ratio=0.5, window=0), dict(ratio=0.5, frame_axis="time")):
        with pytest.raises(ValueError):
            VideoMerge(Schedule(), **kwargs)


def test_merge_call_with_video_plan_keeps_other_tokens_in_place():
    site = video_site(frames=2, txt=3)
    call = random_call(site)
    plan = video_plan(call.k[:, :, site.layout.img_k.as_slice()].mean(1), 2, 2, 0.5, gen())
    merged = merge_call(plan, call, site.layout.img_q)
    out = unmerge_rows(plan, sdpa(merged), site.layout.img_q.start)
    assert out.shape == sdpa(call).shape and math.isfinite(float(out.sum()))
