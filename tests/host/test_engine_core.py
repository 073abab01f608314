"""The engine on every reached family: neutral is exact, branches stay bit-identical, every site is reached,
and the schedule touches exactly the steps and blocks it names."""
from __future__ import annotations

import pytest
import torch

from tools.tiny_models import FAMILY_NAMES

EXPECTED_KINDS = {"sd15": {"self", "cross"}, "sd2": {"self", "cross"}, "sdxl": {"self", "cross"},
                  "sd3": {"joint", "self"}, "flux": {"joint"}, "wan21": {"self", "cross"},
                  "hunyuan_video": {"joint"}, "ltxv": {"self", "cross"}, "qwen_image": {"joint"}}


def test_every_family_has_expectations():
    assert set(FAMILY_NAMES) == set(EXPECTED_KINDS)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_neutral_settings_reproduce_unpatched_output_exactly(family, tiny, sample, engine, temp):
    t = tiny(family)
    base = sample(t.patcher, t)
    neutral = engine.add_effect(t.patcher, temp(1.0), "Test")
    assert torch.equal(sample(neutral, t), base)
    idle = engine.add_effect(t.patcher, temp(1.5, apply_to="uncond"), "Test")  # live, but cfg 1 has no uncond
    assert torch.equal(sample(idle, t, cfg=1.0), sample(t.patcher, t, cfg=1.0))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_patched_branch_leaves_other_branch_bit_identical(family, tiny, sample, engine, temp):
    t = tiny(family)
    base = sample(t.patcher, t)
    patched = engine.add_effect(t.patcher, temp(1.5), "Test")
    assert not torch.equal(sample(patched, t), base)
    assert torch.equal(sample(t.patcher, t), base)
    assert "attnlab_stack" not in t.patcher.model_options.get("transformer_options", {})


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_site_of_every_family_is_reached(family, tiny, sample, engine, recorder):
    from attention_lab.nodes.families import BY_NAME
    from attention_lab.nodes.sites import model_addresses

    t = tiny(family)
    rec = recorder()
    sample(engine.add_effect(t.patcher, rec, "Test"), t, steps=1)
    reached = {str(s.block) for s in rec.sites}
    assert reached == {str(a) for a in model_addresses(t.patcher, BY_NAME[family])}
    assert {s.kind for s in rec.sites} == EXPECTED_KINDS[family]
    for s in rec.sites:
        assert s.layout.img_q is not None and len(s.layout.img_q) > 0
        if s.kind in ("joint", "cross"):
            assert s.layout.txt_k is not None and len(s.layout.txt_k) > 0
        if s.kind == "joint":
            assert len(s.layout.img_q) == s.layout.grid[0] * s.layout.grid[1] * s.layout.grid[2]


def _step_sigmas(patcher, steps):
    import comfy.samplers
    sampling = patcher.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(sampling, "normal", steps)[:-1].tolist()


@pytest.mark.parametrize("family,blocks,expected", [
    ("sd15", "input.*, middle.0", {"input", "middle"}),
    ("flux", "single.1", {"single"}),
])
def test_schedule_touches_exactly_the_named_steps_and_blocks(family, blocks, expected, tiny, sample, recorder):
    from attention_lab.nodes.families import BY_NAME
    from attention_lab.nodes.schedule_inputs import build_schedule

    t = tiny(family)
    schedule = build_schedule("Test", t.patcher, BY_NAME[family], 0.2, 0.6, blocks)
    rec = recorder(schedule)
    from attention_lab.nodes import host
    steps = 10
    sample(host.add_effect(t.patcher, rec, "Test"), t, steps=steps, cfg=1.0)
    sigmas = _step_sigmas(t.patcher, steps)
    wanted = [s for s in sigmas if schedule.sigma_end <= s <= schedule.sigma_start]
    assert 0 < len(wanted) < steps
    assert sorted({round(s.sigma, 5) for s in rec.sites}, reverse=True) == [round(s, 5) for s in wanted]
    assert {s.block.group for s in rec.sites} == expected
    if family == "flux":
        assert {str(s.block) for s in rec.sites} == {"single.1"}


def test_apply_to_follows_the_cond_chunks_whatever_their_order(tiny, sample, engine, recorder):
    t = tiny("sd15")
    rec = recorder()
    from attention_lab.attention.schedule import Schedule
    rec.schedule = Schedule(apply_to="uncond")
    sample(engine.add_effect(t.patcher, rec, "Test"), t, steps=1, cfg=4.0)
    assert rec.sites and all(1 in s.chunks for s in rec.sites)
    for s in rec.sites:
        items = rec.schedule.items(s)
        assert items is None or [s.chunks[i // s.batch_per_chunk] == 1 for i in range(len(items))] == list(items)
