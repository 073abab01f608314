"""Regional prompting on the real host: tiny models of every family, the real sampler, maps read by a probe."""
from __future__ import annotations

import logging

import pytest
import torch

from tools.tiny_models import FAMILY_NAMES

BASE, LENGTHS = 6, (4, 2)  # prompts of different lengths; joined 12 tokens


def probe_effect():
    """An effect that records the probabilities of each attention call it is handed (after the effects before it
    in the stack changed the call), grouped per site call."""
    from attention_lab.attention.effect import Effect
    from attention_lab.attention.maps import attention_probs
    from attention_lab.attention.schedule import Schedule

    class MapProbe(Effect):
        node_id = "TestMapProbe"

        def __init__(self):
            super().__init__(Schedule())
            self.calls = []

        def attend(self, call, site, inner):
            probs = attention_probs(call.q, call.k, call.bias)
            biased = call.bias is not None
            last = self.calls[-1] if self.calls else None
            if (last and last[0] is site and last[1].shape[0] == probs.shape[0] and last[2] == biased
                    and last[1].shape[2] < site.layout.n_q):
                last[1] = torch.cat([last[1], probs], dim=2)
            else:
                self.calls.append([site, probs, biased])
            return inner(call)

    return MapProbe()


def half_masks(frames=1, size=64):
    left = torch.zeros(frames, size, size)
    left[..., : size // 2] = 1
    return left, 1 - left


def make_regions(t, strengths=(1.0, 1.0), masks=None):
    from attention_lab.nodes.regions import AttnLabRegion
    masks = masks or half_masks()
    regions = None
    for i, (n, mask, strength) in enumerate(zip(LENGTHS, masks, strengths)):
        regions = AttnLabRegion.execute(t.conditioning(length=n, seed=20 + i), mask, strength, regions).args[0]
    return regions


def regional(model, base, regions, mode="hard", isolation=0.0, weight=1.0, blocks="", kind="all", apply_to="cond"):
    from attention_lab.nodes.regions import AttnLabRegionalPrompt
    out = AttnLabRegionalPrompt.execute(model, base, regions, mode, isolation, weight, 0.0, 1.0, blocks, kind,
                                        apply_to)
    return out.args[0], out.args[1]


def left_tokens(site):
    f, h, w = site.layout.grid
    cols = torch.arange(w).repeat(f * h)
    return cols < w // 2, cols >= w // 2


def text_columns(site, start, stop, total=BASE + sum(LENGTHS)):
    """Key columns of joined tokens [start, stop) in every repeat of the context, in the site's key axis."""
    txt = site.layout.txt_k
    return [txt.start + r * total + i for r in range(len(txt) // total) for i in range(start, stop)]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_hard_masks_cut_other_regions_tokens(family, tiny, sample, engine):
    t = tiny(family)
    base = t.conditioning(length=BASE, seed=3)
    model, positive = regional(t.patcher, base, make_regions(t))
    probe = probe_effect()
    sample(engine.add_effect(model, probe, "Test"), t, steps=1, cfg=1.0, positive=positive)
    seen = 0
    for site, probs, _ in probe.calls:
        if site.layout.txt_k is None or probs.shape[-1] != site.layout.n_k or len(site.layout.txt_k) < 12:
            continue
        left, right = left_tokens(site)
        img = probs[0][:, site.layout.img_q.as_slice()]
        r0, r1 = text_columns(site, BASE, BASE + 4), text_columns(site, BASE + 4, BASE + 6)
        assert img[:, left][..., r1].abs().max() == 0, site.describe()
        assert img[:, right][..., r0].abs().max() == 0, site.describe()
        assert img[:, left][..., r0].min() > 0
        seen += 1
    assert seen


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_joint_region_text_sees_its_region_and_its_prompt_only(family, tiny, sample, engine):
    t = tiny(family)
    model, positive = regional(t.patcher, t.conditioning(length=BASE, seed=3), make_regions(t))
    probe = probe_effect()
    sample(engine.add_effect(model, probe, "Test"), t, steps=1, cfg=1.0, positive=positive)
    joint = [(s, p) for s, p, b in probe.calls if s.kind == "joint" and p.shape[2] == s.layout.n_q]
    assert joint
    for site, probs in joint:
        left, right = left_tokens(site)
        img = torch.arange(site.layout.n_k)[site.layout.img_k.as_slice()]
        rows = probs[0][:, text_columns(site, BASE, BASE + 4)]  # region 0's text rows
        assert rows[..., img[right]].abs().max() == 0
        assert rows[..., text_columns(site, 0, BASE)].abs().max() == 0
        assert rows[..., img[left]].min() > 0


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_strength_zero_reproduces_the_unpatched_output_exactly(family, tiny, sample):
    t = tiny(family)
    base = t.conditioning(length=BASE, seed=3)
    model, positive = regional(t.patcher, base, make_regions(t, strengths=(0.0, 0.0)))
    assert positive is base
    assert torch.equal(sample(model, t, steps=2, positive=positive), sample(t.patcher, t, steps=2, positive=base))


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("mode", ["hard", "dense", "paint"])
def test_every_mode_changes_every_family(family, mode, tiny, sample):
    t = tiny(family)
    base = t.conditioning(length=BASE, seed=3)
    model, positive = regional(t.patcher, base, make_regions(t), mode=mode, isolation=0.5)
    plain = sample(t.patcher, t, steps=2, positive=positive)
    out = sample(model, t, steps=2, positive=positive)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-4


def flipped(model):
    """A clone whose model calls see the batch in reverse order (uncond before cond, and so on)."""
    m = model.clone()

    def wrapper(apply_model, args):
        flip = lambda x: x.flip(0) if isinstance(x, torch.Tensor) and x.shape[0] == args["input"].shape[0] else x
        c = {k: flip(v) for k, v in args["c"].items()}
        c["transformer_options"] = {**c.get("transformer_options", {}),
                                    "cond_or_uncond": list(reversed(args["cond_or_uncond"]))}
        return apply_model(flip(args["input"]), flip(args["timestep"]), **c).flip(0)
    m.set_model_unet_function_wrapper(wrapper)
    return m


@pytest.mark.parametrize("uncond_length", [BASE, 2 * (BASE + sum(LENGTHS))])
def test_cond_and_uncond_in_either_order_and_repeated_contexts(uncond_length, tiny, sample):
    """The host batches a 12-token cond with a 6-token uncond by repeating the uncond twice, and with a 24-token
    uncond by repeating the cond twice; the effect finds its tokens either way and in either batch order."""
    t = tiny("sd15")
    model, positive = regional(t.patcher, t.conditioning(length=BASE, seed=3), make_regions(t), isolation=0.5)
    negative = t.conditioning(length=uncond_length, seed=5, negative=True)
    plain = sample(t.patcher, t, steps=2, positive=positive, negative=negative)
    out = sample(model, t, steps=2, positive=positive, negative=negative)
    assert (out - plain).abs().max() > 1e-3
    torch.testing.assert_close(sample(flipped(model), t, steps=2, positive=positive, negative=negative), out,
                               rtol=1e-5, atol=1e-5)


def test_repeated_context_keeps_the_cut_in_every_copy(tiny, sample, engine):
    t = tiny("sd15")
    model, positive = regional(t.patcher, t.conditioning(length=BASE, seed=3), make_regions(t))
    probe = probe_effect()
    negative = t.conditioning(length=24, seed=5, negative=True)
    sample(engine.add_effect(model, probe, "Test"), t, steps=1, cfg=4.0, positive=positive, negative=negative)
    touched = [(s, p) for s, p, b in probe.calls if s.kind == "cross" and b and p.shape[-1] == 24
               and p.shape[2] == s.layout.n_q]
    assert touched
    for site, probs in touched:
        left, _ = left_tokens(site)
        assert probs[0][:, left][..., text_columns(site, BASE + 4, BASE + 6)].abs().max() == 0


def test_a_mask_batch_maps_frame_by_frame_on_a_video_model(tiny, sample, engine):
    t = tiny("wan21")
    frames = t.latent_shape[1]
    first = torch.zeros(frames, 64, 64)
    first[0, :, :32] = 1  # region 0: left half of frame 0 only
    masks = (first, torch.zeros(frames, 64, 64) + (1 - first))
    model, positive = regional(t.patcher, t.conditioning(length=BASE, seed=3), make_regions(t, masks=masks))
    probe = probe_effect()
    out = sample(engine.add_effect(model, probe, "Test"), t, steps=1, cfg=1.0, positive=positive)
    assert out.shape == t.latent().shape
    cross = [(s, p) for s, p, b in probe.calls if s.kind == "cross" and p.shape[2] == s.layout.n_q
             and len(s.layout.txt_k) == BASE + sum(LENGTHS)]
    assert cross
    for site, probs in cross:
        f, h, w = site.layout.grid
        frame = torch.arange(f * h * w) // (h * w)
        later = frame > 0
        assert probs[0][:, later][..., text_columns(site, BASE, BASE + 4)].abs().max() == 0
        assert probs[0][:, ~later][..., text_columns(site, BASE, BASE + 4)].max() > 0


def test_a_mask_batch_that_fits_no_frame_count_is_an_error_naming_the_region_mask(tiny, sample):
    t = tiny("wan21")
    masks = half_masks(frames=2)
    model, positive = regional(t.patcher, t.conditioning(length=BASE, seed=3), make_regions(t, masks=masks))
    with pytest.raises(ValueError, match=r"AttnLabRegion: input 'mask': a batch of 2 masks does not fit 3 latent "
                                         r"frames.*Fix: give one mask, or one per frame \(9 video frames or 3"):
        sample(model, t, steps=1, cfg=1.0, positive=positive)


def test_bad_inputs_name_the_node_the_input_and_the_fix(tiny, caplog):
    from attention_lab.nodes.regions import AttnLabRegion
    t = tiny("sd15")
    cond = t.conditioning(length=4, seed=1)
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        AttnLabRegion.execute(cond, torch.zeros(1, 8, 8), 1.0, None)
        AttnLabRegion.execute(cond, torch.ones(1, 8, 8), 1.0, None)
    assert "input 'mask' is empty" in caplog.text and "covers the whole image" in caplog.text
    with pytest.raises(ValueError, match=r"AttnLabRegionalPrompt: input 'regions': the region masks are batches of "
                                         r"2, but SD1.5 makes single images. Fix: give each region one mask"):
        regional(t.patcher, t.conditioning(length=BASE), make_regions(t, masks=half_masks(frames=2)))
    wide = AttnLabRegion.execute([[torch.zeros(1, 4, 32), {}]], torch.ones(1, 8, 8), 1.0, None).args[0]
    with pytest.raises(ValueError, match=r"AttnLabRegionalPrompt: input 'regions': region 1's prompt has width 32, "
                                         r"the base prompt 64. Fix: encode every region's prompt with the same CLIP"):
        regional(t.patcher, t.conditioning(length=BASE), wide)
    with pytest.raises(ValueError, match=r"AttnLabRegion: input 'strength': 5 is outside 0-4"):
        AttnLabRegion.execute(cond, torch.ones(1, 8, 8), 5.0, None)


def test_composes_with_an_ip_adapter_style_patch_and_area_conditioning(tiny, sample, engine):
    """A foreign attn2 output patch (how IP-Adapter-style packs add image prompts) and core's area conditioning
    both still apply beside the regions, and the cut holds."""
    import node_helpers
    t = tiny("sd15")
    calls = []

    def foreign(out, extra_options):
        calls.append(1)
        return out * 1.01

    base = node_helpers.conditioning_set_values(t.conditioning(length=BASE, seed=3),
                                                {"area": (64, 64, 0, 0), "strength": 1.0, "set_area_to_bounds": False})
    model, positive = regional(t.patcher, base, make_regions(t))
    patched = model.clone()
    patched.set_model_attn2_output_patch(foreign)
    probe = probe_effect()
    out = sample(engine.add_effect(patched, probe, "Test"), t, steps=1, cfg=1.0, positive=positive)
    assert calls and torch.isfinite(out).all()
    assert not torch.equal(out, sample(model, t, steps=1, cfg=1.0, positive=positive))
    cross = [(s, p) for s, p, b in probe.calls if s.kind == "cross" and p.shape[2] == s.layout.n_q]
    assert cross
    for site, probs in cross:
        left, _ = left_tokens(site)
        assert probs[0][:, left][..., text_columns(site, BASE + 4, BASE + 6)].abs().max() == 0


def test_the_unpatched_branch_stays_bit_identical(tiny, sample):
    t = tiny("flux")
    base = t.conditioning(length=BASE, seed=3)
    before = sample(t.patcher, t, steps=2, positive=base)
    regional(t.patcher, base, make_regions(t), isolation=0.5)
    assert torch.equal(sample(t.patcher, t, steps=2, positive=base), before)


def test_a_family_without_text_attention_is_refused_by_name():
    from attention_lab.attention.site import SELF
    from attention_lab.nodes.families import DIT, DitGroup, Family
    from attention_lab.nodes.schedule_inputs import check_text_attention
    unconditional = Family("uncond", "An unconditional DiT", DIT, (), 256 * 256,
                           dit_groups=(DitGroup("double_block", "block", "blocks", (SELF,)),))
    with pytest.raises(ValueError, match=r"AttnLabRegionalPrompt: input 'model': An unconditional DiT has no cross- "
                                         r"or joint attention to carry text. Fix: use a text-conditioned model"):
        check_text_attention("AttnLabRegionalPrompt", unconditional)


def test_composes_with_a_controlnet_on_the_joined_conditioning(tiny, sample, engine):
    """Core's ControlNet Apply on the regional conditioning: the control still steers the sample and the regions'
    cut still holds (the joined context keeps its tokens; the ControlNet only adds a key)."""
    import nodes
    from tools.tiny_models import tiny_controlnet
    t = tiny("sd15")
    model, positive = regional(t.patcher, t.conditioning(length=BASE, seed=3), make_regions(t))
    negative = t.conditioning(length=BASE, seed=5, negative=True)
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(0))
    controlled, negative_c = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, tiny_controlnet(t),
                                                                              hint, 1.0, 0.0, 1.0)
    probe = probe_effect()
    out = sample(engine.add_effect(model, probe, "Test"), t, steps=2, positive=controlled, negative=negative_c)
    assert (out - sample(model, t, steps=2, positive=positive, negative=negative)).abs().max() > 1e-3
    touched = [(s, p) for s, p, b in probe.calls if s.kind == "cross" and b and p.shape[2] == s.layout.n_q]
    assert touched
    for site, probs in touched:
        left, _ = left_tokens(site)
        assert probs[0][:, left][..., text_columns(site, BASE + 4, BASE + 6)].abs().max() == 0


@pytest.mark.parametrize("family", ["sd15", "wan21"])
def test_a_long_joined_prompt_still_shares_the_negative_prompts_model_call(family, tiny, sample):
    """Base and four regions of 6 tokens join to 30, five times the negative's 6: past the host's limit of 4 copies,
    so without help cond and uncond would run as two model calls (on WAN, any length difference would). The regional
    model repeats the negative's context to 30 tokens (attention over a repeated context is unchanged), so they
    share one call, with the same result."""
    import comfy.patcher_extension as pe
    from attention_lab.nodes.host import CONTEXT_BATCHING_KEY
    from attention_lab.nodes.regions import AttnLabRegion
    t = tiny(family)
    regions = None
    for i in range(4):
        mask = torch.zeros(1, 64, 64)
        mask[:, (i // 2) * 32:(i // 2 + 1) * 32, (i % 2) * 32:(i % 2 + 1) * 32] = 1
        regions = AttnLabRegion.execute(t.conditioning(length=BASE, seed=30 + i), mask, 1.0, regions).args[0]
    model, positive = regional(t.patcher, t.conditioning(length=BASE, seed=3), regions)
    negative = t.conditioning(length=BASE, seed=5, negative=True)

    def counted(m):
        m, batches = m.clone(), []

        def wrapper(apply_model, args):
            batches.append(args["input"].shape[0])
            return apply_model(args["input"], args["timestep"], **args["c"])
        m.set_model_unet_function_wrapper(wrapper)
        return m, batches

    one, batches = counted(model)
    out = sample(one, t, steps=2, positive=positive, negative=negative)
    assert batches == [2, 2]
    separate, batches = counted(model)
    separate.remove_wrappers_with_key(pe.WrappersMP.CALC_COND_BATCH, CONTEXT_BATCHING_KEY)
    reference = sample(separate, t, steps=2, positive=positive, negative=negative)
    assert batches == [1, 1, 1, 1]
    # float32 rounding of the longer sum only (the tiny random model's latents reach a few hundred)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
