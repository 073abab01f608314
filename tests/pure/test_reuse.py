"""Attention reuse math: the relative change, reuse across steps only below the threshold and against the anchor,
cond/uncond sharing only where the inputs are close, and no reuse outside a sampling run."""
import pytest
import torch

from attention_lab.attention.effect import RUN, AttnCall, RunMemory
from attention_lab.attention.reuse import AttentionReuse, relative_change
from attention_lab.attention.schedule import Schedule
from attention_lab.attention.site import COND, UNCOND

from .test_merge import make_site, random_call, sdpa


class Counting:
    """A backend that counts its calls and the batch items it attended."""

    def __init__(self):
        self.items = []

    def __call__(self, call: AttnCall) -> torch.Tensor:
        self.items.append(call.q.shape[0])
        return sdpa(call)


def run_site(run: RunMemory | None, chunks=(COND, UNCOND), sigma=1.0):
    site = make_site(chunks=chunks, sigma=sigma)
    if run is not None:
        site.extras[RUN] = run
    return site


def nudged(call: AttnCall, by: float) -> AttnCall:
    return AttnCall(call.q * (1 + by), call.k, call.v)


def test_relative_change():
    call = random_call(make_site())
    assert relative_change(call, call) == 0.0
    change = relative_change(nudged(call, 0.3), call)
    share = float(call.q.abs().sum() / sum(x.abs().sum() for x in (call.q, call.k, call.v)))
    assert change == pytest.approx(0.3 * share)


def test_reuses_across_steps_only_below_the_threshold_and_against_the_anchor():
    run, backend = RunMemory(), Counting()
    effect = AttentionReuse(Schedule(), threshold=0.05, across_cfg=False)
    call = random_call(make_site())
    first = effect.attend(call, run_site(run), backend)
    assert torch.equal(first, sdpa(call)) and backend.items == [2]
    assert torch.equal(effect.attend(nudged(call, 0.05), run_site(run, sigma=0.9), backend), first)  # 0.05/3 < 0.05
    assert backend.items == [2]
    again = effect.attend(nudged(call, 0.2), run_site(run, sigma=0.8), backend)  # far from the anchor: computed
    assert backend.items == [2, 2] and torch.allclose(again, sdpa(nudged(call, 0.2)))
    memory = run.by_effect[id(effect)]
    assert (memory.computed, memory.reused, memory.shared) == (2, 1, 0)
    assert "reused 1 of 3" in effect.report(memory)


def test_drift_is_measured_from_the_anchor():
    run, backend = RunMemory(), Counting()
    effect = AttentionReuse(Schedule(), threshold=0.05, across_cfg=False)
    call = random_call(make_site())
    effect.attend(call, run_site(run), backend)
    for step, by in enumerate((0.06, 0.12, 0.18)):  # each 0.06 from the last, 0.02 per step in relative change
        effect.attend(nudged(call, by), run_site(run, sigma=0.9 - step / 10), backend)
    assert backend.items == [2, 2]  # the third drift (0.18 -> 0.06 of the total) forces a recompute


def test_cond_and_uncond_share_only_when_close():
    run, backend = RunMemory(), Counting()
    effect = AttentionReuse(Schedule(), threshold=0.05, across_steps=False)
    half = random_call(make_site(), batch=1)
    same = AttnCall(*(torch.cat([x, x]) for x in (half.q, half.k, half.v)))
    out = effect.attend(same, run_site(run), backend)
    assert backend.items == [1] and torch.equal(out[0], out[1]) and torch.allclose(out, sdpa(same))
    other = random_call(make_site(), batch=2)
    assert torch.equal(effect.attend(other, run_site(run), backend), sdpa(other)) and backend.items == [1, 2]
    assert run.by_effect[id(effect)].shared == 1


def test_uncond_first_chunk_order_is_respected():
    run, backend = RunMemory(), Counting()
    effect = AttentionReuse(Schedule(), threshold=0.05, across_steps=False)
    half = random_call(make_site(), batch=1)
    same = AttnCall(*(torch.cat([x, x * 1.001]) for x in (half.q, half.k, half.v)))
    out = effect.attend(same, run_site(run, chunks=(UNCOND, COND)), backend)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], sdpa(same)[1])


def test_outside_a_run_nothing_is_reused():
    backend = Counting()
    effect = AttentionReuse(Schedule(), threshold=0.5)
    call = random_call(make_site())
    for _ in range(2):
        assert torch.equal(effect.attend(call, run_site(None), backend), sdpa(call))
    assert backend.items == [2, 2]


def test_neutral_and_bad_settings():
    assert AttentionReuse(Schedule(), 0.0).neutral
    assert AttentionReuse(Schedule(), 0.1, across_steps=False, across_cfg=False).neutral
    assert not AttentionReuse(Schedule(), 0.1).neutral
    with pytest.raises(ValueError):
        AttentionReuse(Schedule(), 1.0)


def test_a_changed_bias_is_never_reused():
    run, backend = RunMemory(), Counting()
    effect = AttentionReuse(Schedule(), threshold=0.5, across_cfg=False)
    call = random_call(make_site())
    bias = torch.zeros(1, 1, 1, call.k.shape[2], dtype=call.q.dtype)
    effect.attend(call.with_(bias=bias), run_site(run), backend)
    effect.attend(call.with_(bias=bias.clone()), run_site(run, sigma=0.9), backend)  # same values: reused
    changed = bias.clone()
    changed[..., 0] = -1.0
    out = effect.attend(call.with_(bias=changed), run_site(run, sigma=0.8), backend)
    assert backend.items == [2, 2] and torch.allclose(out, sdpa(call.with_(bias=changed)))
