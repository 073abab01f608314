"""The newer hosts' call signatures (0.38+), driven directly against the dispatcher with the host's own backend.

host_drift.md: newer DiTs publish block_type/block_index and img_slice; the override receives extra kwargs
(scale, enable_gqa, low_precision_attention); Qwen-Image passes b h n d with a positional mask; HunyuanVideo
puts text first; clone() stops deep-copying model_options; a core node may replace the override outright.
"""
from __future__ import annotations

import copy

import pytest
import torch

from attention_lab.attention.site import Span


def sdpa_backend(seen):
    from comfy.ldm.modules.attention import attention_pytorch
    undecorated = attention_pytorch.__wrapped__

    def func(q, k, v, heads, **kwargs):
        seen.append({k2: v2 for k2, v2 in kwargs.items() if k2 != "transformer_options"})
        return undecorated(q, k, v, heads, **{k2: v2 for k2, v2 in kwargs.items() if k2 in
                                             ("mask", "attn_precision", "skip_reshape", "skip_output_reshape")})
    return func


def context(family, effects, latent_shape=(1, 16, 8, 8)):
    from attention_lab.attention.stack import EffectStack
    from attention_lab.nodes.dispatch import CallContext
    from attention_lab.nodes.families import BY_NAME
    return CallContext(EffectStack(tuple(effects)), BY_NAME[family], torch.zeros(latent_shape),
                       torch.tensor([1.0]), {"cond_or_uncond": [0]})


def tag_for(family, group, index):
    from attention_lab.attention.address import BlockAddress
    from attention_lab.nodes.dispatch import BlockTag
    from attention_lab.nodes.families import BY_NAME
    dit_group = next(g for g in BY_NAME[family].dit_groups if g.group == group)
    return BlockTag(BlockAddress(group, index), dit_group)


def qkv(n=21, heads=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, d, generator=g) for _ in range(3)]


def test_native_block_info_img_slice_and_new_kwargs_are_forwarded(recorder):
    from attention_lab.nodes.dispatch import CTX_KEY, Dispatcher
    rec, seen = recorder(), []
    ctx = context("flux", [rec])
    q, k, v = qkv()
    to = {CTX_KEY: ctx, "block_type": "single", "block_index": 3, "img_slice": [5, 21]}
    out = Dispatcher()(sdpa_backend(seen), q, k, v, 4, skip_reshape=True, mask=None, transformer_options=to,
                       scale=0.25, enable_gqa=False, low_precision_attention=False, _inside_attn_wrapper=True)
    site = rec.sites[-1]
    assert str(site.block) == "single.3" and site.kind == "joint"
    assert site.layout.img_q == Span(5, 21) and site.layout.txt_k == Span(0, 5)
    assert seen[-1]["scale"] == 0.25 and seen[-1]["low_precision_attention"] is False
    assert seen[-1]["enable_gqa"] is False and seen[-1]["_inside_attn_wrapper"] is True
    assert out.shape == (1, 21, 64)


def test_qwen_newest_bhnd_with_positional_mask(temp):
    from attention_lab.nodes.dispatch import CTX_KEY, Dispatcher
    seen = []
    ctx = context("qwen_image", [temp(1.5)])
    q, k, v = qkv()
    mask = torch.zeros(1, 1, 21)
    mask[..., :2] = float("-inf")
    to = {CTX_KEY: ctx, "attnlab_block": tag_for("qwen_image", "block", 0)}
    out = Dispatcher()(sdpa_backend(seen), q, k, v, 4, mask, transformer_options=to, skip_reshape=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q * 1.5, k, v, attn_mask=mask.unsqueeze(1))
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(1, 21, 64))
    assert seen[-1]["mask"].shape[-2:] == (21, 21)


@pytest.mark.parametrize("newer,txt_first", [(False, False), (True, True)])
def test_hunyuan_token_order_follows_the_host(recorder, newer, txt_first):
    from attention_lab.nodes.dispatch import CTX_KEY, Dispatcher
    rec = recorder()
    ctx = context("hunyuan_video", [rec], latent_shape=(1, 16, 1, 8, 8))
    ctx.txt_len = 5
    q, k, v = qkv()
    to = {CTX_KEY: ctx, "block_type": "double", "block_index": 0} if newer else {CTX_KEY: ctx}
    if not newer:  # 0.3.64 publishes no block info: our block replace tags the call
        to["attnlab_block"] = tag_for("hunyuan_video", "double", 0)
    Dispatcher()(sdpa_backend([]), q, k, v, 4, skip_reshape=True, transformer_options=to)
    layout = rec.sites[-1].layout
    assert layout.txt_k == (Span(0, 5) if txt_first else Span(16, 21))
    assert layout.img_q == (Span(5, 21) if txt_first else Span(0, 16))


def test_override_is_never_taken_for_a_container_function():
    from attention_lab.nodes.dispatch import Dispatcher
    assert not hasattr(Dispatcher(), "container_function")


def test_shallow_clone_of_newer_hosts_keeps_the_base_stack(tiny, engine, temp):
    t = tiny("sd15")
    first = engine.add_effect(t.patcher, temp(1.2), "Test")
    shallow = first.clone()
    shallow.model_options = {k: (copy.copy(v) if isinstance(v, (dict, list)) else v)
                             for k, v in first.model_options.items()}
    second = engine.add_effect(shallow, temp(1.3), "Test")
    assert len(engine.effect_stack(first)) == 1 and len(engine.effect_stack(second)) == 2


@pytest.mark.parametrize("family", ["flux", "wan21", "qwen_image"])
def test_no_unet_patch_lists_on_dits(family, tiny, engine, temp):
    """Newer hosts call attn1_patch/attn2_patch inside DiT blocks with other signatures: never register them."""
    m = engine.add_effect(tiny(family).patcher, temp(1.2), "Test")
    patches = m.model_options["transformer_options"].get("patches", {})
    assert not any(name in patches for name in ("attn1_patch", "attn2_patch", "attn1_output_patch"))


def test_core_backend_selector_installed_before_ours_still_sees_our_effect(tiny, sample, engine, temp):
    """ModelPatcher.set_model_optimized_attention (newer hosts) installs lambda _func, *a, **k: fn(*a, **k)."""
    from comfy.ldm.modules.attention import attention_pytorch
    t = tiny("sd15")
    chosen = t.patcher.clone()
    chosen.model_options["transformer_options"]["optimized_attention_override"] = \
        lambda _func, *a, **k: attention_pytorch.__wrapped__(*a, **k)
    assert not torch.equal(sample(engine.add_effect(chosen, temp(1.5), "Test"), t), sample(chosen, t))
