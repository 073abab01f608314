"""Regional prompting and token reweighting math, on hand-built calls (pure torch)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attention_lab.attention import regions as rg
from attention_lab.attention.address import BlockAddress
from attention_lab.attention.context import PREFIX, REPEAT, match_items, prompt_items
from attention_lab.attention.effect import PREPARED, AttnCall, ModelInputs
from attention_lab.attention.maps import attention_probs
from attention_lab.attention.regional import RegionalPrompt, RegionSet
from attention_lab.attention.reweight import TokenWeighting, TokenWeights
from attention_lab.attention.schedule import Schedule
from attention_lab.attention.site import CROSS, JOINT, SELF, Site, Span, TokenLayout

C, H, W = 8, 4, 4
N = H * W


def sdpa(call: AttnCall) -> torch.Tensor:
    out = F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=call.bias)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


class Probe:
    """A backend that records the probabilities of every call it runs (rows in call order)."""

    def __init__(self):
        self.probs = []

    def __call__(self, call):
        self.probs.append(attention_probs(call.q, call.k, call.bias))
        return sdpa(call)

    def rows(self):
        return torch.cat(self.probs, dim=2)


def left_right_masks(height=16, width=16):
    masks = torch.zeros(2, 1, height, width)
    masks[0, :, :, :width // 2] = 1
    masks[1, :, :, width // 2:] = 1
    return masks


def region_setup(base=5, lengths=(3, 4), strengths=(1.0, 1.0), masks=None):
    g = torch.Generator().manual_seed(0)
    joined = torch.randn(1, base + sum(lengths), C, generator=g)
    labels = rg.text_labels(base, lengths)
    return joined, RegionSet((joined,), (labels,), left_right_masks() if masks is None else masks, strengths)


def layout(kind, t):
    if kind == CROSS:
        return TokenLayout(N, t, (1, H, W), Span(0, N), None, None, Span(0, t), 64)
    if kind == SELF:
        return TokenLayout(N, N, (1, H, W), Span(0, N), Span(0, N), None, None, 64)
    return TokenLayout(N + t, N + t, (1, H, W), Span(t, N + t), Span(t, N + t), Span(0, t), Span(0, t), 64)


def site_for(effect, kind, context, chunks=(0,), t=None, percent=0.0):
    state = effect.prepare(ModelInputs(context, chunks, 1.0))
    t = t or context.shape[1]
    return Site("flux", kind, BlockAddress("double", 0), 2, 4, layout(kind, t), 1.0, percent, chunks,
                {"batch_per_chunk": context.shape[0] // len(chunks), PREPARED: {id(effect): state}})


def random_call(b, nq, nk, seed=1):
    g = torch.Generator().manual_seed(seed)
    return AttnCall(*(torch.randn(b, 2, n, 4, generator=g) for n in (nq, nk, nk)))


LEFT = torch.tensor([i % W < W // 2 for i in range(N)])


def test_hard_cross_attention_cuts_the_other_regions_tokens():
    joined, regions = region_setup()
    effect = RegionalPrompt(Schedule(), regions)
    site = site_for(effect, CROSS, joined)
    probe = Probe()
    effect.attend(random_call(1, N, 12), site, probe)
    probs = probe.rows()[0]  # h N T
    region0, region1, base = slice(5, 8), slice(8, 12), slice(0, 5)
    assert probs[:, LEFT][..., region1].abs().max() == 0
    assert probs[:, ~LEFT][..., region0].abs().max() == 0
    assert probs[:, LEFT][..., region0].min() > 0 and probs[..., base].min() > 0


def test_joint_text_rows_see_their_own_prompt_and_region_only():
    joined, regions = region_setup()
    effect = RegionalPrompt(Schedule(), regions)
    site = site_for(effect, JOINT, joined)
    probe = Probe()
    effect.attend(random_call(1, N + 12, N + 12), site, probe)
    probs = probe.rows()[0]  # h (T+N) (T+N), text first
    img = slice(12, 12 + N)
    region0_rows = probs[:, 5:8]
    assert region0_rows[..., img][..., ~LEFT].abs().max() == 0
    assert region0_rows[..., 8:12].abs().max() == 0 and region0_rows[..., 0:5].abs().max() == 0
    base_rows = probs[:, 0:5]
    assert base_rows[..., 5:12].abs().max() == 0 and base_rows[..., img].min() > 0
    assert probs[:, img][:, LEFT][..., 8:12].abs().max() == 0


def test_items_without_the_joined_context_run_untouched():
    joined, regions = region_setup()
    effect = RegionalPrompt(Schedule(), regions)
    other = torch.randn(1, 12, C)
    context = torch.cat([other, joined])  # uncond first
    site = site_for(effect, CROSS, context, chunks=(1, 0))
    call = random_call(2, N, 12)
    out = effect.attend(call, site, sdpa)
    assert torch.equal(out[0], sdpa(AttnCall(call.q[:1], call.k[:1], call.v[:1]))[0])
    assert not torch.allclose(out[1], sdpa(call)[1])


def test_a_context_the_host_repeated_keeps_its_labels():
    joined, regions = region_setup()
    effect = RegionalPrompt(Schedule(), regions)
    repeated = joined.repeat(1, 2, 1)
    site = site_for(effect, CROSS, repeated)
    probe = Probe()
    effect.attend(random_call(1, N, 24), site, probe)
    probs = probe.rows()[0]
    for start in (0, 12):
        assert probs[:, LEFT][..., start + 8:start + 12].abs().max() == 0


def test_isolation_one_cuts_regions_apart_in_self_attention():
    joined, regions = region_setup()
    effect = RegionalPrompt(Schedule(), regions, isolation=1.0)
    site = site_for(effect, SELF, joined)
    probe = Probe()
    effect.attend(random_call(1, N, N), site, probe)
    probs = probe.rows()[0]
    assert probs[:, LEFT][..., ~LEFT].abs().max() == 0
    assert probs[:, ~LEFT][..., LEFT].abs().max() == 0


def test_overlapping_masks_blend_and_do_not_conflict():
    masks = torch.ones(2, 1, 4, 4)  # both regions everywhere
    mq = rg.grid_masks(masks, (1, 2, 2))
    assert torch.equal(rg.conflict(mq, mq), torch.zeros(4, 4))
    joined, regions = region_setup(masks=masks)
    effect = RegionalPrompt(Schedule(), regions)
    probe = Probe()
    effect.attend(random_call(1, N, 12), site_for(effect, CROSS, joined), probe)
    assert probe.rows()[0][..., 5:12].min() > 0  # both regions' tokens seen everywhere


@pytest.mark.parametrize("size,grid", [((7, 13), (1, 3, 5)), ((64, 64), (1, 4, 4)), ((2, 3), (1, 5, 7))])
def test_masks_of_any_size_map_onto_any_grid(size, grid):
    masks = torch.zeros(1, 1, *size)
    masks[..., : size[1] // 2] = 1
    out = rg.grid_masks(masks, grid)
    assert out.shape == (1, grid[1] * grid[2]) and 0 <= out.min() and out.max() <= 1
    assert out.view(grid[1], grid[2])[:, 0].min() == 1


def test_mask_batches_map_frame_by_frame():
    masks = torch.zeros(1, 9, 4, 4)
    masks[0, 0] = 1
    assert rg.fit_frames(masks, 3, 4).shape == (1, 3, 4, 4)  # 9 pixel frames -> 3 latent frames
    assert rg.fit_frames(masks, 3, 4)[0, 0].min() == 1 and rg.fit_frames(masks, 3, 4)[0, 1:].max() == 0
    assert rg.fit_frames(masks[:, :3], 3, 4).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="a batch of 5 masks does not fit 3 latent frames"):
        rg.fit_frames(masks[:, :5], 3, 4)


def test_strengths_of_zero_without_isolation_are_neutral():
    _, regions = region_setup(strengths=(0.0, 0.0))
    assert RegionalPrompt(Schedule(), regions).neutral
    assert not RegionalPrompt(Schedule(), regions, isolation=0.5).neutral


def test_dense_modulation_raises_in_region_and_lowers_out_of_region_scores():
    logits = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    target = torch.tensor([1.0, 0.0, 1.0])
    out = rg.dense_modulate(logits, target, torch.tensor(0.5))
    assert torch.allclose(out, torch.tensor([[[[1.0, 0.5, 2.0]]]]))  # 0 -> towards max 2; 1 -> towards min 0
    assert torch.equal(rg.dense_modulate(logits, target, torch.tensor(0.0)), logits)
    assert rg.dense_decay(0.0) == 1.0 and rg.dense_decay(0.5) == 0.5 ** 5


@pytest.mark.parametrize("kind", [CROSS, SELF, JOINT])
@pytest.mark.parametrize("mode", ["dense", "paint"])
def test_soft_modes_run_and_leave_other_items_alone(mode, kind):
    joined, regions = region_setup()
    effect = RegionalPrompt(Schedule(apply_to="cond"), regions, mode=mode, isolation=0.3)
    context = torch.cat([joined, torch.randn(1, 12, C)])
    t = 12
    nq = N + t if kind == JOINT else N
    nk = {CROSS: t, SELF: N, JOINT: N + t}[kind]
    call = random_call(2, nq, nk)
    out = effect.attend(call, site_for(effect, kind, context, chunks=(0, 1)), sdpa)
    plain = sdpa(call)
    assert torch.equal(out[1], sdpa(AttnCall(call.q[1:], call.k[1:], call.v[1:]))[0])
    assert (out[0] - plain[0]).abs().max() > 1e-3


def test_paint_bias_follows_ediff_i():
    weights = torch.tensor([[1.0, 0.0]])  # one region, two query rows
    labels = torch.tensor([[-1, 0]])  # a base token, a region token
    bias = rg.paint_text_bias(weights, labels, torch.tensor([[2.0]]), w=0.5, sigma=3.0)
    expected = 0.5 * math.log(4.0) * 2.0
    assert torch.allclose(bias[0, 0], torch.tensor([[0.0, expected], [0.0, 0.0]]))


def test_match_items_finds_repeated_and_foreign_contexts():
    joined, _ = region_setup()
    other = torch.randn(1, 24, C)
    context = torch.cat([other, joined.repeat(1, 2, 1)])
    assert match_items(context, (joined,)) == [None, 0]
    assert match_items(context[:, :13], (joined,)) == [None, None]
    assert prompt_items(torch.cat([joined, torch.randn(1, 5, C)], dim=1), joined) == [PREFIX]
    assert prompt_items(context, joined) == [None, REPEAT]


# -- token reweighting -------------------------------------------------------------------------------------------
def weights_site(effect, kind, t, chunks=(0,), b=1, context=None):
    state = effect.prepare(ModelInputs(context, chunks, 1.0))
    return Site("sd15", kind, BlockAddress("input", 1), 2, 4, layout(kind, t), 1.0, 0.0, chunks,
                {"batch_per_chunk": b // len(chunks), PREPARED: {id(effect): state}})


def test_p2p_weight_two_doubles_the_tokens_contribution():
    effect = TokenWeights(Schedule(), TokenWeighting(6, ((2, 2.0),)))
    call = random_call(1, N, 6)
    out = effect.attend(call, weights_site(effect, CROSS, 6), sdpa)
    probs = attention_probs(call.q, call.k)
    share = torch.einsum("bhn,bhd->bnhd", probs[..., 2], call.v[:, :, 2]).reshape(1, N, -1)
    assert torch.allclose(out - sdpa(call), share, atol=1e-5)


def test_renormalise_is_a_log_weight_on_the_logits():
    effect = TokenWeights(Schedule(), TokenWeighting(6, ((2, 2.0), (4, 0.5))), mode="renormalise")
    call = random_call(1, N, 6)
    out = effect.attend(call, weights_site(effect, CROSS, 6), sdpa)
    bias = torch.zeros(6)
    bias[2], bias[4] = math.log(2.0), math.log(0.5)
    assert torch.allclose(out, sdpa(call.with_(bias=bias.view(1, 1, 1, 6))), atol=1e-6)


def test_joint_reweighting_changes_image_rows_only_and_repeats_with_the_context():
    effect = TokenWeights(Schedule(), TokenWeighting(6, ((1, 3.0),)))
    call = random_call(1, N + 12, N + 12)
    out = effect.attend(call, weights_site(effect, JOINT, 12), sdpa)
    plain = sdpa(call)
    assert torch.equal(out[:, :12], plain[:, :12])
    v = call.v.clone()
    v[:, :, [1, 7]] *= 3.0
    assert torch.allclose(out[:, 12:], sdpa(call.with_(v=v))[:, 12:], atol=1e-6)


def test_weights_apply_to_the_selected_chunk_only():
    effect = TokenWeights(Schedule(apply_to="cond"), TokenWeighting(6, ((2, 2.0),)))
    call = random_call(2, N, 6)
    out = effect.attend(call, weights_site(effect, CROSS, 6, chunks=(1, 0), b=2), sdpa)
    plain = sdpa(call)
    assert torch.allclose(out[0], plain[0], atol=1e-6) and not torch.allclose(out[1], plain[1])


def test_negative_weights_need_p2p_and_ones_are_neutral():
    with pytest.raises(ValueError, match="weights of 0 or more"):
        TokenWeights(Schedule(), TokenWeighting(6, ((2, -1.0),)), mode="renormalise")
    assert TokenWeights(Schedule(), TokenWeighting(6, ((2, 1.0),))).neutral
    assert torch.equal(TokenWeighting(6, ((2, 2.0),)).item_weights(REPEAT, 7), torch.ones(7))


def test_weights_find_their_prompt_by_content_repeated_or_as_a_prefix():
    prompt = torch.randn(1, 6, C)
    effect = TokenWeights(Schedule(), TokenWeighting(6, ((2, 2.0),), prompt))
    context = torch.cat([prompt.repeat(1, 2, 1), torch.cat([prompt, torch.randn(1, 6, C)], 1), torch.randn(1, 12, C)])
    call = random_call(3, N, 12)
    out = effect.attend(call, weights_site(effect, CROSS, 12, chunks=(0, 0, 1), b=3, context=context), sdpa)
    v = call.v.clone()
    v[0, :, [2, 8]] *= 2.0  # the repeated prompt: both copies
    v[1, :, [2]] *= 2.0  # the prompt then a region's tokens: the prompt's copy only
    torch.testing.assert_close(out, sdpa(call.with_(v=v)))
