"""Composition with other packs: overrides and replaces installed before and after ours all still run."""
from __future__ import annotations

import logging

import pytest
import torch

OVERRIDE = "optimized_attention_override"


def foreign_override(log, prev=None):
    def other_pack_override(func, *args, **kwargs):
        log.append(args[0].shape)
        return prev(func, *args, **kwargs) if prev else func(*args, **kwargs)
    return other_pack_override


def with_override(model, fn):
    m = model.clone()
    m.model_options["transformer_options"][OVERRIDE] = fn
    return m


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_override_installed_before_ours(family, tiny, sample, engine, recorder, temp):
    t = tiny(family)
    log = []
    theirs = with_override(t.patcher, foreign_override(log))
    rec = recorder()
    both = engine.add_effect(engine.add_effect(theirs, rec, "Test"), temp(1.5), "Test")
    out = sample(both, t)
    assert log and rec.sites, "both overrides must run"
    assert not torch.equal(out, sample(theirs, t)), "our temperature must still change the output"


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_override_installed_after_ours_chaining(family, tiny, sample, engine, recorder):
    t = tiny(family)
    rec, log = recorder(), []
    ours = engine.add_effect(t.patcher, rec, "Test")
    prev = ours.model_options["transformer_options"][OVERRIDE]
    both = with_override(ours, foreign_override(log, prev))
    sample(both, t)
    assert log and rec.sites


def test_override_installed_after_ours_without_chaining_warns(tiny, sample, engine, recorder, caplog,
                                                               fresh_warnings):
    t = tiny("sd15")
    rec, log = recorder(), []
    dropped = with_override(engine.add_effect(t.patcher, rec, "Test"), foreign_override(log))
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        sample(dropped, t)
    assert log and not rec.sites
    assert "other_pack_override" in caplog.text and "Put the Attention Lab nodes after" in caplog.text


def _replace_forwarding(log):
    from comfy.ldm.modules.attention import optimized_attention

    def forwarding_replace(q, k, v, extra_options):
        log.append(extra_options["block"])
        return optimized_attention(q, k, v, extra_options["n_heads"], transformer_options=extra_options)
    return forwarding_replace


def _replace_opaque(log):
    from comfy.ldm.modules.attention import optimized_attention

    def opaque_replace(q, k, v, extra_options):
        log.append(extra_options["block"])
        return optimized_attention(q, k, v, extra_options["n_heads"])
    return opaque_replace


@pytest.mark.parametrize("order", ["before", "after"])
def test_unet_attn2_replace_before_and_after(order, tiny, sample, engine, recorder):
    t = tiny("sd15")
    rec, log = recorder(), []

    def theirs(m):
        m = m.clone()
        m.set_model_attn2_replace(_replace_forwarding(log), "input", 1)
        return m
    m = engine.add_effect(theirs(t.patcher), rec, "Test") if order == "before" else theirs(
        engine.add_effect(t.patcher, rec, "Test"))
    sample(m, t)
    assert log, "the other pack's replace must run"
    assert any(str(s.block) == "input.1.0" and s.kind == "cross" for s in rec.sites), "ours runs inside it"


def test_unet_replace_that_bypasses_the_override_warns(tiny, sample, engine, recorder, caplog, fresh_warnings):
    t = tiny("sd15")
    rec, log = recorder(), []
    m = engine.add_effect(t.patcher, rec, "Test").clone()
    m.set_model_attn2_replace(_replace_opaque(log), "input", 1)
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        sample(m, t)
    assert log
    reached = {(str(s.block), s.kind) for s in rec.sites}
    assert ("input.1.0", "cross") not in reached and ("input.1.0", "self") in reached
    assert "opaque_replace" in caplog.text


def _dit_replace(log):
    def other_block_replace(args, extra):
        log.append(1)
        return extra["original_block"](args)
    return other_block_replace


def test_dit_block_replace_installed_before_ours_is_chained(tiny, sample, engine, recorder):
    t = tiny("flux")
    rec, log = recorder(), []
    m = t.patcher.clone()
    m.set_model_patch_replace(_dit_replace(log), "dit", "double_block", 0)
    sample(engine.add_effect(m, rec, "Test"), t)
    assert log
    assert "double.0" in {str(s.block) for s in rec.sites}


def test_dit_block_replace_installed_after_ours_warns(tiny, sample, engine, recorder, caplog, fresh_warnings):
    t = tiny("flux")
    rec, log = recorder(), []
    m = engine.add_effect(t.patcher, rec, "Test").clone()
    m.set_model_patch_replace(_dit_replace(log), "dit", "double_block", 0)
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        sample(m, t)
    blocks = {str(s.block) for s in rec.sites}
    assert log and "double.0" not in blocks and "double.1" in blocks
    assert "other_block_replace" in caplog.text


def test_reinstalling_on_top_of_a_foreign_override_does_not_apply_effects_twice(tiny, sample, engine, recorder):
    t = tiny("sd15")
    rec1, rec2, log = recorder(), recorder(), []
    first = engine.add_effect(t.patcher, rec1, "Test")
    prev = first.model_options["transformer_options"][OVERRIDE]
    middle = with_override(first, foreign_override(log, prev))
    top = engine.add_effect(middle, rec2, "Test")
    sample(top, t, steps=1, cfg=1.0)
    assert len(rec1.sites) == len(rec2.sites) == len(log) > 0
