"""AttnLabTokenWeights on the real host: the words' tokens found with a real (tiny) CLIP, weighted where image
tokens attend to text, in UNet cross-attention and in Flux's joint attention."""
from __future__ import annotations

import pytest
import torch

PROMPT = "a red cat sitting on a green mat"


@pytest.fixture(scope="module")
def clip():
    from tools.tiny_models import tiny_sd1_clip
    return tiny_sd1_clip(0)


def model_for(family):
    from tools.tiny_models import BUNDLES, build, tiny_bundle
    return tiny_bundle(family)[0] if family in BUNDLES else build(family).patcher


def encode(clip, text=PROMPT, family="sd15"):
    """CLIP Text Encode with the tiny CLIP; families without a tiny bundle take their tiny model's other keys."""
    from tools.tiny_models import BUNDLES, build
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    extras = {"pooled_output": pooled} if family in BUNDLES else build(family).conditioning()[0][1]
    return [[cond, extras]]


def token_weights(model, clip, weights, mode="p2p", prompt=PROMPT, apply_to="cond"):
    from attention_lab.nodes.reweight import AttnLabTokenWeights
    return AttnLabTokenWeights.execute(model, clip, prompt, weights, mode, 0.0, 1.0, "", "all", apply_to).args[0]


def value_spy():
    """(before, after): effects recording the values of each call, before the stack's effects edit the call and
    as the kernel receives it."""
    from attention_lab.attention.effect import Effect
    from attention_lab.attention.schedule import Schedule

    class Before(Effect):
        node_id = "TestBefore"

        def __init__(self):
            super().__init__(Schedule())
            self.seen = []

        def pre(self, call, site):
            self.seen.append((site, call.v))
            return call

    class After(Before):
        node_id = "TestAfter"

        def pre(self, call, site):
            return call

        def attend(self, call, site, inner):
            self.seen.append((site, call.q.shape[2], call.v))
            return inner(call)

    return Before(), After()


def cat_positions(clip):
    from attention_lab.nodes.tokens import prompt_tokens
    return prompt_tokens("Test", clip, "sd15", PROMPT, ["cat"]).positions["cat"]


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl", "sd3", "flux", "wan21"])
def test_weight_two_doubles_the_words_values_for_image_queries(family, clip, sample, engine):
    from tools.tiny_models import build
    t = build(family)
    model = model_for(family)
    before, after = value_spy()
    patched = engine.add_effect(token_weights(engine.add_effect(model, before, "Test"), clip, "cat:2"), after, "Test")
    sample(patched, t, steps=1, cfg=1.0, positive=encode(clip, family=family))
    (pos,) = cat_positions(clip)
    originals = {id(site): v for site, v in before.seen}
    checked = 0
    for site, rows, v in after.seen:
        if site.kind not in ("cross", "joint") or id(site) not in originals:
            continue
        txt = site.layout.txt_k
        ratio = v[..., txt.start + pos, :] / originals[id(site)][..., txt.start + pos, :]
        others = torch.ones(v.shape[2], dtype=torch.bool)
        others[txt.start + pos] = False
        image_rows = site.layout.img_q is None or rows == len(site.layout.img_q)
        expected = 2.0 if image_rows else 1.0
        torch.testing.assert_close(ratio, torch.full_like(ratio, expected))
        assert torch.equal(v[:, :, others], originals[id(site)][:, :, others])
        checked += image_rows
    assert checked


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl", "sd3", "flux", "wan21"])
def test_weights_of_one_reproduce_the_unpatched_output_exactly(family, clip, sample):
    from tools.tiny_models import build
    t = build(family)
    model = model_for(family)
    positive, negative = encode(clip, family=family), encode(clip, "blurry", family=family)
    assert torch.equal(sample(token_weights(model, clip, "cat:1, mat:1"), t, steps=2, positive=positive,
                              negative=negative),
                       sample(model, t, steps=2, positive=positive, negative=negative))


@pytest.mark.parametrize("mode", ["p2p", "renormalise"])
def test_both_modes_change_the_output(mode, clip, sample):
    from tools.tiny_models import build
    t = build("sd15")
    model = model_for("sd15")
    positive = encode(clip)
    plain = sample(model, t, steps=2, positive=positive)
    assert (sample(token_weights(model, clip, "cat:3, mat:0.2", mode=mode), t, steps=2, positive=positive)
            - plain).abs().max() > 1e-4


def test_renormalise_is_a_log_weight_on_the_words_logits(clip, sample, engine):
    from tools.tiny_models import build
    t = build("sd15")
    from attention_lab.attention.effect import Effect
    from attention_lab.attention.schedule import Schedule

    class BiasSpy(Effect):
        node_id = "TestBias"

        def __init__(self):
            super().__init__(Schedule(kinds=frozenset({"cross"})))
            self.biases = []

        def attend(self, call, site, inner):
            self.biases.append(call.bias)
            return inner(call)

    spy = BiasSpy()
    model = engine.add_effect(token_weights(model_for("sd15"), clip, "cat:2", mode="renormalise"), spy, "Test")
    sample(model, t, steps=1, cfg=1.0, positive=encode(clip))
    (pos,) = cat_positions(clip)
    assert spy.biases
    for bias in spy.biases:
        expected = torch.zeros(bias.shape[-1])
        expected[pos] = torch.log(torch.tensor(2.0))
        torch.testing.assert_close(bias.flatten(0, -2)[0], expected)


def test_bad_input_names_the_node_the_input_and_the_fix(clip):
    model = model_for("sd15")
    with pytest.raises(ValueError, match=r"AttnLabTokenWeights: input 'weights': 'dog' is not in the prompt; its "
                                         r"words are: a, red, cat, sitting, on, a, green, mat.*Fix:"):
        token_weights(model, clip, "dog:2")
    with pytest.raises(ValueError, match=r"AttnLabTokenWeights: input 'weights': 'cat' has a negative weight.*Fix: "
                                         r"use mode 'p2p'"):
        token_weights(model, clip, "cat:-1", mode="renormalise")
    with pytest.raises(ValueError, match=r"AttnLabTokenWeights: input 'prompt'"):
        token_weights(model, clip, "cat:2", prompt="   ")


def test_the_unpatched_branch_stays_bit_identical(clip, sample):
    from tools.tiny_models import build
    t = build("sd15")
    model = model_for("sd15")
    positive = encode(clip)
    before = sample(model, t, steps=2, positive=positive)
    token_weights(model, clip, "cat:3")
    assert torch.equal(sample(model, t, steps=2, positive=positive), before)


def test_composes_with_a_regional_prompt_on_the_joined_context(clip, sample, engine):
    """The regional prompt joins the base prompt with region prompts (231 tokens); the weights find the base
    prompt as the context's prefix and weight its word only, not the same position in the regions' prompts."""
    from attention_lab.nodes.regions import AttnLabRegion, AttnLabRegionalPrompt
    from tools.tiny_models import build
    t = build("sd15")
    mask = torch.zeros(1, 64, 64)
    mask[..., :32] = 1
    regions = AttnLabRegion.execute(encode(clip, "a dog on a rug"), mask, 1.0, None).args[0]
    regions = AttnLabRegion.execute(encode(clip, "a fox in a box"), 1 - mask, 1.0, regions).args[0]
    out = AttnLabRegionalPrompt.execute(model_for("sd15"), encode(clip), regions, "hard", 0.0, 1.0, 0.0, 1.0, "",
                                        "all", "cond")
    model, positive = out.args
    assert positive[0][0].shape[1] == 3 * 77
    before, after = value_spy()
    patched = engine.add_effect(token_weights(engine.add_effect(model, before, "Test"), clip, "cat:2"), after,
                                "Test")
    sample(patched, t, steps=1, cfg=1.0, positive=positive)
    (pos,) = cat_positions(clip)
    originals = {id(site): v for site, v in before.seen}
    checked = 0
    for site, _, v in after.seen:
        if site.kind != "cross" or id(site) not in originals:
            continue
        ratio = v[..., :, 0] / originals[id(site)][..., :, 0]
        expected = torch.ones(v.shape[2])
        expected[pos] = 2.0
        torch.testing.assert_close(ratio[0, 0], expected)
        checked += 1
    assert checked
