"""AttnLabToMe and AttnLabToDo on real tiny models: neutral is exact, active settings change the sample and repeat
bit for bit, odd latents run, over-large strides are refused, max_downsample picks the levels, bad inputs name the
fix."""
from __future__ import annotations

import pytest
import torch

from attention_lab.nodes.merge import AttnLabToDo, AttnLabToMe

SCHEDULE = dict(start_percent=0.0, end_percent=1.0, blocks="", kind="all", apply_to="both")
TOME = dict(ratio=0.5, stride_x=2, stride_y=2, max_downsample="1", seed=0, proportional=False, **SCHEDULE)
TODO = dict(factor=2, max_downsample="1", **SCHEDULE)
FAMILIES = ["sd15", "flux"]


def tome(model, **changes):
    return AttnLabToMe.execute(model, **{**TOME, **changes}).args[0]


def todo(model, **changes):
    return AttnLabToDo.execute(model, **{**TODO, **changes}).args[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_neutral_settings_are_exact(family, tiny, sample):
    t = tiny(family)
    base = sample(t.patcher, t)
    for model in (tome(t.patcher, ratio=0.0), tome(t.patcher, stride_x=1, stride_y=1), todo(t.patcher, factor=1)):
        assert torch.equal(sample(model, t), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_active_settings_change_the_sample_and_repeat_bit_for_bit(family, tiny, sample):
    t = tiny(family)
    base = sample(t.patcher, t)
    for make in (lambda: tome(t.patcher), lambda: tome(t.patcher, proportional=True), lambda: todo(t.patcher)):
        first, again = sample(make(), t), sample(make(), t)
        assert torch.isfinite(first).all() and not torch.equal(first, base)
        assert torch.equal(first, again)
    assert not torch.equal(sample(tome(t.patcher, seed=1), t), sample(tome(t.patcher, seed=2), t))


@pytest.mark.parametrize("family,latent", [("sd15", (1, 4, 15, 17)), ("flux", (1, 16, 9, 11))])
def test_odd_latents_run(family, latent, tiny, sample):
    t = tiny(family)
    x = torch.zeros(latent)
    base = sample(t.patcher, t, latent=x)
    for model in (tome(t.patcher, stride_x=3, stride_y=1, max_downsample="2"), todo(t.patcher, factor=2),
                  todo(t.patcher, factor=3, max_downsample="2")):
        out = sample(model, t, latent=x)
        assert out.shape == base.shape and torch.isfinite(out).all() and not torch.equal(out, base)


def test_stride_larger_than_the_grid_is_refused_naming_node_input_and_fix(tiny, sample):
    t = tiny("flux")  # an 8x8 latent: a 4x4 token grid, smaller than an 8x8 stride
    with pytest.raises(ValueError, match=r"AttnLabToMe: input 'stride_y': 8 is larger than the 4x4 token grid .*Fix:"):
        sample(tome(t.patcher, stride_x=8, stride_y=8), t)
    assert torch.isfinite(sample(tome(t.patcher, stride_x=4, stride_y=4), t)).all()


def test_apply_to_one_half_of_the_batch(tiny, sample):
    t = tiny("sd15")
    both, cond = sample(tome(t.patcher), t), sample(tome(t.patcher, apply_to="cond"), t)
    assert torch.isfinite(cond).all() and not torch.equal(both, cond)
    assert torch.isfinite(sample(todo(t.patcher, apply_to="uncond"), t)).all()


@pytest.mark.parametrize("level,grids", [("1", {(1, 16, 16)}), ("2", {(1, 16, 16), (1, 8, 8)})])
def test_max_downsample_picks_the_resolution_levels(level, grids, tiny, sample, recorder, engine):
    from attention_lab.nodes.host import effect_stack
    t = tiny("sd15")  # a 16x16 latent: attention at 16x16 and 8x8
    rec = recorder()
    model = engine.add_effect(tome(t.patcher, max_downsample=level), rec, "TestRecorder")
    sample(model, t, steps=1)
    effect = effect_stack(model).effects[0]
    applied = {s.layout.grid for s in rec.sites if effect.applies(s)}
    assert applied == grids
    assert {s.layout.grid for s in rec.sites} == {(1, 16, 16), (1, 8, 8)}


@pytest.mark.parametrize("family,pixels", [("sd15", 8), ("sdxl", 16), ("flux", 16), ("wan21", 16)])
def test_token_pixels_are_those_of_the_finest_attention_level(family, pixels, tiny):
    from attention_lab.nodes.families import BY_NAME
    from attention_lab.nodes.merge import token_pixels
    assert token_pixels(tiny(family).patcher, BY_NAME[family]) == pixels


def test_sdxl_finest_attention_level_is_reached_at_max_downsample_1(tiny, sample):
    t = tiny("sdxl")  # attention only from the 2x downsampled level on, as SDXL
    base = sample(t.patcher, t, steps=2)
    for model in (tome(t.patcher), todo(t.patcher)):
        out = sample(model, t, steps=2)
        assert torch.isfinite(out).all() and not torch.equal(out, base)


@pytest.mark.parametrize("node,changes,inp,fragment", [
    (tome, dict(ratio=1.0), "ratio", "outside 0.0-0.95"),
    (tome, dict(ratio=-0.1), "ratio", "outside"),
    (tome, dict(stride_x=0), "stride_x", "outside 1-8"),
    (tome, dict(stride_y=9), "stride_y", "outside 1-8"),
    (tome, dict(max_downsample="3"), "max_downsample", "not a choice"),
    (tome, dict(kind="cross"), "kind", "not one this node changes"),
    (todo, dict(kind="joint"), "kind", "has no 'joint'"),
    (todo, dict(factor=0), "factor", "outside 1-8"),
    (todo, dict(max_downsample="16"), "max_downsample", "not a choice"),
    (todo, dict(blocks="double.*"), "blocks", "selects no block"),
])
def test_bad_input_names_node_input_and_fix(node, changes, inp, fragment, tiny):
    with pytest.raises(ValueError) as err:
        node(tiny("sd15").patcher, **changes)
    text = str(err.value)
    name = "AttnLabToMe" if node is tome else "AttnLabToDo"
    assert text.startswith(f"{name}: input '{inp}'") and fragment in text and "Fix:" in text
