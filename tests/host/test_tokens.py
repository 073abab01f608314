"""Token positions of prompt phrases: parse_weights, and prompt_tokens against tiny random-weight CLIPs built from
the host's own tokenizer and text-encoder classes (the tokenizer files the host ships; the WAN sentencepiece model
is trained here in a few milliseconds). Each layout is checked against the context the CLIP really encodes."""
from __future__ import annotations

import gc
import io

import pytest

from attention_lab.nodes.families import FAMILIES
from attention_lab.nodes.tokens import LAYOUTS, MAX_LISTED_WORDS, PromptTokens, parse_weights, prompt_tokens

NODE = "AttnLabTokenWeights"
PROMPT = "a photo of a cat on a red car with a cat"  # T5 ids all < 2048 (see T5_4096); no punctuation (WAN's sp)
PHRASES = {"cat": 2, "red car": 1}  # phrase -> occurrences in PROMPT

CLIP_CFG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 3,
            "projection_dim": 64}  # 3 layers: SDXL/SD2/SD3 encoders take the penultimate layer
T5_CFG = {"d_model": 32, "d_kv": 8, "num_heads": 2, "d_ff": 64, "num_layers": 1}
# SD3ClipModel pads CLIP-L|G to 4096 channels and concatenates T5 after it on the token axis, so a T5 beside CLIPs
# must be 4096 wide; a 2048-token vocabulary keeps it small (PROMPT's T5 ids are below 2048).
T5_4096 = {**T5_CFG, "d_model": 4096, "vocab_size": 2048}
UMT5_CFG = {**T5_CFG, "vocab_size": 256}


# -- tiny CLIPs ----------------------------------------------------------------------------------------------------
def _clip(tokenizer, encoder, tokenizer_data=None, **configs):
    """A comfy.sd.CLIP from host classes with tiny per-encoder configs (model_options '<name>_model_config')."""
    import comfy.sd
    import comfy.supported_models_base

    from tools.tiny_models import init_weights_

    target = comfy.supported_models_base.ClipTarget(tokenizer, encoder)
    clip = comfy.sd.CLIP(target=target, tokenizer_data=tokenizer_data or {},
                         model_options={f"{name}_model_config": cfg for name, cfg in configs.items()})
    init_weights_(clip.cond_stage_model, 0)
    return clip


def _spiece_model() -> bytes:
    """A tiny sentencepiece model (umT5's special ids: pad 0, eos 1, unk 2) trained on words of PROMPT."""
    import sentencepiece

    corpus = [PROMPT, "a dog on a red car", "the cat and the dog", "photo of a red hat"] * 10
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=out, vocab_size=64,
                                             hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                             minloglevel=3)
    return out.getvalue()


def _build(name: str):
    """The tiny CLIP called ``name``."""
    import comfy.sdxl_clip
    import comfy.text_encoders.flux as flux
    import comfy.text_encoders.lt as lt
    import comfy.text_encoders.sd2_clip as sd2
    import comfy.text_encoders.sd3_clip as sd3
    import comfy.text_encoders.wan as wan

    from tools.tiny_models import tiny_sd1_clip

    builders = {
        "sd1": lambda: tiny_sd1_clip(0),
        "sd2": lambda: _clip(sd2.SD2Tokenizer, sd2.SD2ClipModel, clip_h=CLIP_CFG),
        "sdxl": lambda: _clip(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel, clip_l=CLIP_CFG,
                              clip_g=CLIP_CFG),
        "sd3": lambda: _clip(sd3.SD3Tokenizer, sd3.sd3_clip(), clip_l=CLIP_CFG, clip_g=CLIP_CFG, t5xxl=T5_4096),
        "sd3_clips": lambda: _clip(sd3.SD3Tokenizer, sd3.sd3_clip(t5=False), clip_l=CLIP_CFG, clip_g=CLIP_CFG),
        "sd3_clip_g": lambda: _clip(sd3.SD3Tokenizer, sd3.sd3_clip(clip_l=False, t5=False), clip_g=CLIP_CFG),
        "sd3_t5": lambda: _clip(sd3.SD3Tokenizer, sd3.sd3_clip(clip_l=False, clip_g=False), t5xxl=T5_CFG),
        "flux": lambda: _clip(flux.FluxTokenizer, flux.flux_clip(), clip_l=CLIP_CFG, t5xxl=T5_CFG),
        "ltxv": lambda: _clip(lt.LTXVT5Tokenizer, lt.ltxv_te(), t5xxl=T5_CFG),
        "wan": lambda: _clip(wan.WanT5Tokenizer, wan.te(), tokenizer_data={"spiece_model": _spiece_model()},
                             umt5xxl=UMT5_CFG),
    }
    return builders[name]()


@pytest.fixture(scope="module")
def clips():
    """clips(name) -> a cached tiny CLIP; freed at the end of the module (ModelPatcher.__del__ needs the host)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _build(name)
        return cache[name]
    yield get
    cache.clear()
    gc.collect()


def context_length(clip, prompt: str) -> int:
    """Token count of what CLIPTextEncode gives: the encoded context's token axis."""
    return clip.encode_from_tokens(clip.tokenize(prompt)).shape[1]


def flat_ids(clip, prompt: str, keys: list[str]) -> list:
    """Token ids along the context's token axis, built from the keys laid end to end."""
    tokens = clip.tokenize(prompt, return_word_ids=True)
    return [t[0] for key in keys for batch in tokens[key] for t in batch]


def phrase_ids(clip, phrase: str, key: str) -> list[int]:
    """The word-token ids the phrase alone gets from one tokenizer key."""
    return [t[0] for batch in clip.tokenize(phrase, return_word_ids=True)[key] for t in batch if t[2] > 0]


def error_text(fn, *args) -> str:
    with pytest.raises(ValueError) as err:
        fn(*args)
    return str(err.value)


# -- parse_weights -------------------------------------------------------------------------------------------------
def test_parse_weights_reads_phrases_and_weights():
    assert parse_weights(NODE, "cat:1.6, red hat:0.4") == [("cat", 1.6), ("red hat", 0.4)]
    assert parse_weights(NODE, " cat : 2 ,\n red   hat:-0.5,\n") == [("cat", 2.0), ("red hat", -0.5)]
    assert parse_weights(NODE, "ratio 1:2:0.5") == [("ratio 1:2", 0.5)]


@pytest.mark.parametrize("text,fragment", [
    ("", "it is empty"),
    (" , \n", "it is empty"),
    ("cat:1.2, red hat", "'red hat' has no ':weight'"),
    ("cat:lots", "'lots' of 'cat' is not a number"),
    ("cat:nan", "'nan' of 'cat' is not a number"),
    (":1.5", "has no phrase"),
    ("cat:1.2, Cat:0.5", "'Cat' is given twice"),
])
def test_parse_weights_errors_name_node_input_and_fix(text, fragment):
    message = error_text(parse_weights, NODE, text)
    assert message.startswith(f"{NODE}: input 'weights': ")
    assert fragment in message and "Fix: " in message


# -- SD1 CLIP: lengths and positions ---------------------------------------------------------------------------------
def test_sd1_short_prompt_length_and_positions(clips):
    clip = clips("sd1")
    result = prompt_tokens(NODE, clip, "sd15", PROMPT, list(PHRASES))
    assert result.length == context_length(clip, PROMPT) == 77
    flat = flat_ids(clip, PROMPT, ["l"])
    (cat,) = phrase_ids(clip, "cat", "l")
    assert result.positions["cat"] == tuple(i for i, t in enumerate(flat) if t == cat)  # both occurrences
    assert len(result.positions["cat"]) == 2
    red, car = phrase_ids(clip, "red car", "l")
    (p, q) = result.positions["red car"]
    assert (flat[p], flat[q]) == (red, car) and q == p + 1


def test_sd1_long_prompt_spans_two_batches_and_a_phrase_may_straddle_them(clips):
    clip = clips("sd1")
    prompt = "dog " * 74 + "red hat cat"  # start, 74 dogs, red | end, start, hat, cat, end, pad...
    result = prompt_tokens(NODE, clip, "sd15", prompt, ["red hat", "cat", "dog"])
    assert [len(b) for b in clip.tokenize(prompt)["l"]] == [77, 77]
    assert result.length == context_length(clip, prompt) == 154
    assert result.positions["red hat"] == (75, 78)
    assert result.positions["cat"] == (79,)
    assert result.positions["dog"] == tuple(range(1, 75))


def test_prompt_weight_syntax_keeps_positions(clips):
    clip = clips("sd1")
    prompt = "a photo of a (cat:1.3) on a red car"
    result = prompt_tokens(NODE, clip, "sd15", prompt, ["cat", "red car"])
    assert result.length == context_length(clip, prompt)
    assert result.positions == prompt_tokens(NODE, clip, "sd15", "a photo of a cat on a red car", ["cat", "red car"]
                                             ).positions


def test_no_phrases_gives_the_length_alone(clips):
    assert prompt_tokens(NODE, clips("sd1"), "sd15", PROMPT, []) == PromptTokens(length=77, positions={})


# -- other encoder layouts -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,family,keys", [
    ("sd2", "sd2", ["h"]),
    ("sdxl", "sdxl", ["g"]),  # g and l side by side on channels: one run of positions (same ids)
    ("sd3", "sd3", ["l", "t5xxl"]),  # [l|g] then T5 on the token axis
    ("sd3_clips", "sd3", ["l"]),
    ("sd3_clip_g", "sd3", ["g"]),
    ("sd3_t5", "sd3", ["t5xxl"]),
    ("flux", "flux", ["t5xxl"]),  # CLIP-L only makes the pooled vector
    ("ltxv", "ltxv", ["t5xxl"]),
    ("wan", "wan21", ["umt5xxl"]),
])
def test_layout_matches_the_encoded_context(clips, name, family, keys):
    clip = clips(name)
    result = prompt_tokens(NODE, clip, family, PROMPT, list(PHRASES))
    flat = flat_ids(clip, PROMPT, keys)
    assert result.length == context_length(clip, PROMPT) == len(flat)
    for phrase, count in PHRASES.items():
        expected = [t for key in keys for t in phrase_ids(clip, phrase, key) * count]
        assert [flat[p] for p in result.positions[phrase]] == expected, phrase


def test_sd3_t5_ids_fit_the_tiny_vocabulary(clips):
    ids = flat_ids(clips("sd3"), PROMPT, ["t5xxl"])
    assert max(ids) < T5_4096["vocab_size"]


@pytest.mark.parametrize("family", ["sd2", "sdxl", "sd3", "flux", "wan21", "ltxv"])
def test_one_encoder_clip_is_the_context_for_any_family(clips, family):
    clip = clips("sd1")  # how the tiny bundles pair it with every family's tiny model
    result = prompt_tokens(NODE, clip, family, PROMPT, list(PHRASES))
    assert result == prompt_tokens(NODE, clip, "sd15", PROMPT, list(PHRASES))
    assert result.length == context_length(clip, PROMPT)


def test_every_family_has_a_layout():
    assert {f.name for f in FAMILIES} == set(LAYOUTS)


# -- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,family,words", [
    ("sd1", "sd15", "a, photo, of, a, cat, on, a, red, car, with, a, cat"),
    ("flux", "flux", "a, photo, of, a, cat, on, a, red, car, with, a, cat"),  # T5 splits 'a' into '▁', 'a'
    ("wan", "wan21", "a, photo, of, a, cat, on, a, red, car, with, a, cat"),
])
def test_missing_phrase_lists_the_prompt_words(clips, name, family, words):
    message = error_text(prompt_tokens, NODE, clips(name), family, PROMPT, ["cat", "hatt"])
    assert message.startswith(f"{NODE}: input 'weights': 'hatt' is not in the prompt; its words are: {words}. ")
    assert "Fix: use words as they appear in the prompt" in message


def test_missing_phrase_in_a_long_prompt_lists_a_few_words(clips):
    prompt = " ".join(["dog"] * 100)
    message = error_text(prompt_tokens, NODE, clips("sd1"), "sd15", prompt, ["cat"])
    assert f"... ({100 - MAX_LISTED_WORDS} more)" in message


def test_empty_prompt_is_an_error(clips):
    message = error_text(prompt_tokens, NODE, clips("sd1"), "sd15", "  ", ["cat"])
    assert message.startswith(f"{NODE}: input 'prompt': ") and "Fix: " in message


@pytest.mark.parametrize("family,label", [("hunyuan_video", "HunyuanVideo"), ("qwen_image", "Qwen-Image")])
def test_template_families_are_not_reached_yet(clips, family, label):
    message = error_text(prompt_tokens, NODE, clips("sd1"), family, PROMPT, ["cat"])
    assert message.startswith(f"{NODE}: input 'clip': token weights do not reach {label} yet")
    assert "template" in message and "SD1.5" in message and "Flux" in message and "LTXV" in message


def test_clip_of_another_family_is_an_error(clips):
    message = error_text(prompt_tokens, NODE, clips("flux"), "sd2", PROMPT, ["cat"])  # keys l and t5xxl, no h
    assert message.startswith(f"{NODE}: input 'clip': this CLIP's text encoder (tokenizer keys: l, t5xxl) does not "
                              "match the SD2 model")
    assert "OpenCLIP-H" in message
