"""AttnLabVideoMerge and AttnLabAttentionReuse on real tiny models: neutral settings are exact, active settings
change the sample and repeat bit for bit, frame counts are kept, reuse is counted and reported, bad input names the
node, the input and the fix."""
from __future__ import annotations

import logging

import pytest
import torch

from attention_lab.nodes.merge import AttnLabVideoMerge
from attention_lab.nodes.reuse import AttnLabAttentionReuse

SCHEDULE = dict(start_percent=0.0, end_percent=1.0, blocks="", kind="all")
VIDEO = dict(ratio=0.7, window=2, frames_in="tokens", seed=0, proportional=False, max_downsample="1",
             apply_to="both", **SCHEDULE)
REUSE = dict(threshold=0.05, across_steps=True, across_cfg=True, **SCHEDULE)


def video(model, **changes):
    return AttnLabVideoMerge.execute(model, **{**VIDEO, **changes}).args[0]


def reuse(model, **changes):
    return AttnLabAttentionReuse.execute(model, **{**REUSE, **changes}).args[0]


@pytest.mark.parametrize("family", ["wan21", "hunyuan_video", "ltxv"])
def test_video_merge_on_frames_in_tokens(family, tiny, sample):
    t = tiny(family)
    base = sample(t.patcher, t)
    assert torch.equal(sample(video(t.patcher, ratio=0.0), t), base)
    assert torch.equal(sample(video(t.patcher, window=1), t), base)
    first, again = sample(video(t.patcher), t), sample(video(t.patcher), t)
    assert first.shape == base.shape and torch.isfinite(first).all() and not torch.equal(first, base)
    assert torch.equal(first, again)
    assert not torch.equal(sample(video(t.patcher, seed=1), t), sample(video(t.patcher, seed=5, window=3), t))


def test_video_merge_on_frames_in_the_batch(tiny, sample):
    t = tiny("sd15")
    frames = t.latent(4)
    base = sample(t.patcher, t, latent=frames)
    out = sample(video(t.patcher, frames_in="batch", window=3), t, latent=frames)
    assert out.shape == base.shape and torch.isfinite(out).all() and not torch.equal(out, base)
    single = t.latent(1)
    unchanged = sample(t.patcher, t, latent=single)
    assert torch.equal(sample(video(t.patcher, frames_in="batch"), t, latent=single), unchanged)


@pytest.mark.parametrize("changes,inp,fragment", [
    (dict(), "model", "still images"),
    (dict(frames_in="frames"), "frames_in", "not a choice"),
    (dict(ratio=1.0), "ratio", "outside 0.0-0.95"),
    (dict(window=0, frames_in="batch"), "window", "outside 1-16"),
])
def test_video_merge_bad_input_on_an_image_model(changes, inp, fragment, tiny):
    with pytest.raises(ValueError) as err:
        video(tiny("sd15").patcher, **changes)
    text = str(err.value)
    assert text.startswith(f"AttnLabVideoMerge: input '{inp}'") and fragment in text and "Fix:" in text


def test_video_merge_batch_frames_on_a_video_dit_is_refused(tiny):
    with pytest.raises(ValueError, match="AttnLabVideoMerge: input 'frames_in'.*Fix: set frames_in to 'tokens'"):
        video(tiny("wan21").patcher, frames_in="batch")


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_reuse_off_is_exact_and_on_repeats(family, tiny, sample):
    t = tiny(family)
    base = sample(t.patcher, t, steps=4)
    for off in (reuse(t.patcher, threshold=0.0), reuse(t.patcher, across_steps=False, across_cfg=False)):
        assert torch.equal(sample(off, t, steps=4), base)
    first, again = (sample(reuse(t.patcher, threshold=0.5), t, steps=4) for _ in range(2))
    assert torch.isfinite(first).all() and not torch.equal(first, base) and torch.equal(first, again)


def reports(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "AttnLabAttentionReuse" in r.getMessage()]


def test_reuse_reports_how_often_it_reused(tiny, sample, caplog):
    t = tiny("sd15")
    caplog.set_level(logging.INFO, logger="attnlab")
    sample(reuse(t.patcher, threshold=0.5), t, steps=6)
    sample(reuse(t.patcher, threshold=0.5, across_cfg=False), t, steps=6, cfg=1.0)
    sample(reuse(t.patcher, threshold=0.001), t, steps=6)
    loose, steps_only, strict = reports(caplog)
    assert "reused 0 of" not in loose and "shared cond->uncond in 0 " not in loose
    assert "shared cond->uncond in 0 " in steps_only
    assert "reused 0 of" in strict


def test_reuse_keeps_nothing_between_runs(tiny, sample):
    t = tiny("sd15")
    model = reuse(t.patcher, threshold=0.5)
    first = sample(model, t, steps=4)
    assert torch.equal(sample(model, t, steps=4), first)  # a second run starts without the first run's anchors


def test_reuse_bad_threshold(tiny):
    with pytest.raises(ValueError, match="AttnLabAttentionReuse: input 'threshold'.*Fix:"):
        reuse(tiny("sd15").patcher, threshold=0.9)
