"""Attention guidance: neutral is exact, PAG matches core's, stacked perturbations share one batched pass,
the schedule picks exactly its steps, every family with self or joint attention is reached."""
from __future__ import annotations

import pytest
import torch

from tools.tiny_models import FAMILY_NAMES

DIT_FAMILIES = [f for f in FAMILY_NAMES if f not in ("sd15", "sd2", "sdxl")]


def pag(model, scale=3.0, blocks="", start=0.0, end=1.0):
    from attention_lab.nodes.guidance import AttnLabPAG
    return AttnLabPAG.execute(model, scale, 0.0, start, end, blocks, "all").args[0]


def seg(model, scale=3.0, sigma=10.0, blocks=""):
    from attention_lab.nodes.guidance import AttnLabSEG
    return AttnLabSEG.execute(model, scale, 0.0, sigma, 0.0, 1.0, blocks, "all").args[0]


def slg(model, scale=3.0, blocks=""):
    from attention_lab.nodes.guidance import AttnLabSkipLayerGuidance
    return AttnLabSkipLayerGuidance.execute(model, scale, 0.0, 0.0, 1.0, blocks, "all").args[0]


def counting(model):
    """A clone that records the batch size of every model call, per sigma."""
    import comfy.patcher_extension as pe
    calls = []
    m = model.clone()

    def count(executor, x, t, *args, **kwargs):
        calls.append((round(float(t.max()), 5), x.shape[0]))
        return executor(x, t, *args, **kwargs)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_count", count)
    return m, calls


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_scale_zero_is_exact(family, tiny, sample):
    t = tiny(family)
    base = sample(t.patcher, t)
    neutral = [pag(t.patcher, 0.0), seg(t.patcher, 0.0), nag(t.patcher, t.conditioning(seed=9), scale=1.0),
               nag(t.patcher, t.conditioning(seed=9), alpha=0.0)]
    if family == "flux":
        neutral.append(slg(t.patcher, 0.0))
    for model in neutral:
        assert torch.equal(sample(model, t), base)


def one_by_one(args):
    """A calc function that evaluates each cond in its own model call (as core's PAG pass does)."""
    import comfy.samplers
    return [None if c is None else comfy.samplers.calc_cond_batch(args["model"], [c], args["input"], args["sigma"],
                                                                    args["model_options"])[0]
            for c in args["conds"]]


def separately(model):
    m = model.clone()
    m.model_options["sampler_calc_cond_batch_function"] = one_by_one
    return m


def test_pag_matches_core_at_its_defaults(tiny, sample):
    """Batched alike, ours equals core's PAG bit for bit; with the host's batching, ours differs from core's by
    no more than core's own result differs between batchings (float32 kernels depend on the batch)."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    t = tiny("sd15")
    core = PerturbedAttentionGuidance.execute(t.patcher, 3.0).args[0]
    ours = pag(t.patcher, 3.0)
    core_separate = sample(separately(core), t, steps=4)
    assert not torch.equal(core_separate, sample(t.patcher, t, steps=4))
    assert torch.equal(sample(separately(ours), t, steps=4), core_separate)
    core_joined, ours_joined = sample(core, t, steps=4), sample(ours, t, steps=4)
    batching_noise = (core_joined - core_separate).abs().max()
    assert (ours_joined - core_joined).abs().max() <= 2 * batching_noise + 1e-5


def noop(model):
    """A test-only perturbation that changes nothing: it holds a chunk so batch sizes match across runs."""
    from attention_lab.attention.guidance import Perturbation
    from attention_lab.attention.schedule import Schedule
    from attention_lab.nodes.host import add_guidance
    return add_guidance(model, Perturbation(Schedule(), scale=1.0), "TestNoop")


def test_stacked_perturbations_share_one_pass_and_add_up(tiny, sample):
    t = tiny("sd15")
    both, calls = counting(seg(pag(t.patcher), sigma=2.0))
    steps = 3
    out_both = sample(both, t, steps=steps)
    assert len(calls) == steps, "no extra model call: the perturbed chunks join the cond/uncond call"
    assert {b for _, b in calls} == {4}, "cond + uncond + PAG + SEG in one batch"
    # Computed separately, each with a do-nothing perturbation holding the other's chunk (same batch, so the
    # same float32 kernels): the stacked guidance is the sum of the two.
    base, p, s = (sample(m, t, steps=1) for m in (noop(noop(t.patcher)), noop(pag(t.patcher)),
                                                  seg(noop(t.patcher), sigma=2.0)))
    stacked = sample(both, t, steps=1)
    assert not torch.equal(p, base) and not torch.equal(s, base)
    torch.testing.assert_close(stacked, p + s - base, rtol=1e-5, atol=1e-5)  # relative to the output, float32
    assert not torch.equal(out_both, sample(pag(t.patcher), t, steps=steps))


def test_without_the_main_call_the_perturbations_still_take_one_extra_call(tiny, sample):
    t = tiny("sd15")
    model, calls = counting(separately(seg(pag(t.patcher), sigma=2.0)))
    sample(model, t, steps=2)
    assert sorted(b for _, b in calls) == [1, 1, 1, 1, 2, 2], "per step: cond, uncond, one call for both"


def test_schedule_perturbs_exactly_its_steps(tiny, sample):
    import comfy.samplers
    t = tiny("sd15")
    model, calls = counting(pag(t.patcher, start=0.2, end=0.6))
    steps = 10
    sample(model, t, steps=steps)
    sampling = t.patcher.get_model_object("model_sampling")
    lo, hi = sampling.percent_to_sigma(0.6), sampling.percent_to_sigma(0.2)
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)[:-1].tolist()
    expected = [3 if lo <= s <= hi else 2 for s in sigmas]
    assert [b for _, b in calls] == expected and 0 < expected.count(3) < steps


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_pag_reaches_every_family(family, tiny, sample):
    t = tiny(family)
    assert not torch.equal(sample(pag(t.patcher), t, steps=2), sample(t.patcher, t, steps=2))


@pytest.mark.parametrize("family", DIT_FAMILIES)
def test_skip_layer_guidance_on_every_dit(family, tiny, sample):
    t = tiny(family)
    assert not torch.equal(sample(slg(t.patcher), t, steps=2), sample(t.patcher, t, steps=2))


def test_composes_with_another_packs_post_cfg_function(tiny, sample):
    t = tiny("sd15")
    seen = []

    def other(args):
        seen.append(1)
        return args["denoised"] * 0.5
    theirs = t.patcher.clone()
    theirs.set_model_sampler_post_cfg_function(other)
    out = sample(pag(theirs), t)
    assert seen and not torch.equal(out, sample(theirs, t))


@pytest.mark.parametrize("call,inp,fragment", [
    (lambda m: slg(m), "model", "is a UNet"),
    (lambda m: pag(m, scale=500.0), "scale", "outside"),
    (lambda m: seg(m, sigma=0.0), "blur_sigma", "outside"),
    (lambda m: pag(m, blocks="double.*"), "blocks", "selects no block"),
])
def test_bad_input(call, inp, fragment, tiny):
    with pytest.raises(ValueError) as err:
        call(tiny("sd15").patcher)
    assert f"input '{inp}'" in str(err.value) and fragment in str(err.value) and "Fix:" in str(err.value)


def nag(model, negative, scale=5.0, tau=2.5, alpha=0.5, blocks=""):
    from attention_lab.nodes.guidance import AttnLabNAG
    return AttnLabNAG.execute(model, negative, scale, tau, alpha, 0.0, 1.0, blocks, "all").args[0]


@pytest.mark.parametrize("family", ["sd15", "flux", "wan21"])
def test_nag_with_the_positive_as_negative_changes_nothing(family, tiny, sample):
    t = tiny(family)
    positive = t.conditioning(seed=3)
    # The baseline holds a do-nothing chunk too, so both runs batch two items (float32 kernels depend on batch).
    base = sample(noop(t.patcher), t, cfg=1.0, positive=positive)
    torch.testing.assert_close(base, sample(t.patcher, t, cfg=1.0, positive=positive), rtol=1e-5, atol=1e-4)
    same = sample(nag(t.patcher, positive), t, cfg=1.0, positive=positive)
    # NAG's negative-context attention runs as extra items of the same kernel call: float32 noise only.
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-4)
    other = sample(nag(t.patcher, t.conditioning(seed=9)), t, cfg=1.0, positive=positive)
    assert (other - base).abs().max() > 1e-3


def test_nag_skips_with_a_warning_when_the_host_cannot_batch_the_negative(tiny, sample, caplog, fresh_warnings):
    import logging
    t = tiny("sd15")
    positive = t.conditioning(seed=3)
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        out = sample(nag(t.patcher, t.conditioning(seed=9, length=5)), t, cfg=1.0, positive=positive)
    assert torch.equal(out, sample(t.patcher, t, cfg=1.0, positive=positive))
    assert "NAG skipped: the negative prompt encodes to 5 tokens" in caplog.text


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_nag_reaches_every_family(family, tiny, sample):
    t = tiny(family)
    positive = t.conditioning(seed=3)
    negative = t.conditioning(seed=9)
    base = sample(t.patcher, t, cfg=1.0, steps=2, positive=positive)
    assert not torch.equal(sample(nag(t.patcher, negative), t, cfg=1.0, steps=2, positive=positive), base)


def test_nag_and_pag_share_the_one_call(tiny, sample):
    t = tiny("flux")
    model, calls = counting(pag(nag(t.patcher, t.conditioning(seed=9))))
    sample(model, t, cfg=1.0, steps=2)
    assert [b for _, b in calls] == [3, 3], "cond + NAG's negative companion + PAG's perturbed chunk"


def test_nag_refuses_a_negative_from_another_encoder(tiny):
    t = tiny("sd15")
    wrong = [[torch.zeros(1, 7, 4096), {}]]
    with pytest.raises(ValueError, match=r"AttnLabNAG: input 'negative': its text features are 4096 wide but this "
                                         r"SD1.5 model takes 64.*Fix: encode"):
        nag(t.patcher, wrong)


def sag(model, scale=0.5, blur_sigma=2.0, blocks=""):
    from attention_lab.nodes.guidance import AttnLabSAG
    return AttnLabSAG.execute(model, scale, blur_sigma, 0.0, 1.0, blocks, "all").args[0]


def test_sag_matches_core_at_its_defaults(tiny, sample):
    """Same map, mask and extra pass as core; core computes the middle block's output with explicit maps, ours
    with the host's kernel (so that SAG composes), hence float32 tolerance."""
    from comfy_extras.nodes_sag import SelfAttentionGuidance
    t = tiny("sd15")
    core = sample(SelfAttentionGuidance.execute(t.patcher, 0.5, 2.0).args[0], t, steps=4)
    assert not torch.equal(core, sample(t.patcher, t, steps=4))
    ours = sample(sag(t.patcher), t, steps=4)
    assert (ours - core).abs().max() <= 1e-5 * core.abs().max(), "within 1e-5 of the output's scale"
    assert torch.equal(sample(sag(t.patcher, scale=0.0), t, steps=4), sample(t.patcher, t, steps=4))


@pytest.mark.parametrize("family", ["sdxl", "flux", "wan21"])
def test_sag_on_other_families_and_stacked_with_pag(family, tiny, sample):
    t = tiny(family)
    base = sample(t.patcher, t, steps=2)
    alone = sample(sag(t.patcher, scale=1.0), t, steps=2)
    assert not torch.equal(alone, base) and torch.isfinite(alone).all()
    assert not torch.equal(sample(pag(sag(t.patcher, scale=1.0)), t, steps=2), alone)
