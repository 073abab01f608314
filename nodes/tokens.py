"""Where words of a prompt sit in the token axis of the context CLIPTextEncode gives a model family.

``parse_weights`` reads ``"cat:1.6, red hat:0.4"``. ``prompt_tokens`` tokenizes the prompt with the user's CLIP
(the host's ``CLIP.tokenize(text, return_word_ids=True)``: encoder key -> token batches of (id, weight, word id),
word id 0 for start/end/padding) and lays the keys out as the family's text encoder concatenates them into the
context (host 0.3.64: comfy/sd1_clip.py, sdxl_clip.py, text_encoders/sd3_clip.py, flux.py, wan.py, lt.py). The
layouts are a registry: adding a family is adding an entry to ``LAYOUTS``.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from .errors import node_error
from .families import BY_NAME

MAX_LISTED_WORDS = 40  # words of the prompt a "not in the prompt" error lists
_EMBEDDING_PIECE = "embedding</w>"  # how a textual-inversion embedding shows among the listed words


@dataclass(frozen=True)
class Segment:
    """A run of the context's token axis: tokenizer keys encoded side by side on the channel axis (so sharing
    positions), and per key the text-encoder attribute that must be loaded for it to reach the context."""

    keys: tuple[str, ...]
    encoders: tuple[str | None, ...] = ()  # attribute of clip.cond_stage_model per key; empty: no condition


@dataclass(frozen=True)
class Layout:
    """A family's context: its segments in token-axis order, the text encoder it takes (for error messages), and
    why token weights do not reach it yet (empty when they do)."""

    segments: tuple[Segment, ...]
    text_encoder: str
    unreached: str = ""


_TEMPLATE = "its text encoder wraps the prompt in a template whose first tokens are cropped from the context"

LAYOUTS: dict[str, Layout] = {
    "sd15": Layout((Segment(("l",)),), "CLIP-L"),
    "sd2": Layout((Segment(("h",)),), "OpenCLIP-H"),
    # SDXLClipModel: cat([l, g], dim=-1) cut to the shorter; the refiner's CLIP has "g" alone.
    "sdxl": Layout((Segment(("g", "l")),), "CLIP-L and CLIP-G"),
    # SD3ClipModel: [l|g padded to 4096] when clip_l or clip_g is loaded, then T5 when t5xxl is loaded.
    "sd3": Layout((Segment(("l", "g"), ("clip_l", "clip_g")), Segment(("t5xxl",), ("t5xxl",))),
                  "CLIP-L, CLIP-G and/or T5-XXL"),
    # FluxClipModel: the context is T5 alone; CLIP-L only makes the pooled vector.
    "flux": Layout((Segment(("t5xxl",)),), "CLIP-L and T5-XXL"),
    "wan21": Layout((Segment(("umt5xxl",)),), "umT5-XXL"),
    "ltxv": Layout((Segment(("t5xxl",)),), "T5-XXL"),
    "hunyuan_video": Layout((), "LLaVA-Llama-3 and CLIP-L", unreached=_TEMPLATE),
    "qwen_image": Layout((), "Qwen2.5-VL", unreached=_TEMPLATE),
}


@dataclass(frozen=True)
class PromptTokens:
    length: int  # token count of the context tensor CLIPTextEncode(prompt) gives this family's model
    positions: dict[str, tuple[int, ...]]  # phrase -> positions in that token axis (every occurrence, every segment)


@dataclass(frozen=True)
class _Run:
    """A resolved segment: the tokenizer key read for token ids, its offset and length in the context."""

    key: str
    offset: int
    length: int


# -- parsing the weights input -------------------------------------------------------------------------------------
def parse_weights(node_id: str, text: str) -> list[tuple[str, float]]:
    """'cat:1.6, red hat:0.4' -> [('cat', 1.6), ('red hat', 0.4)]; items split on commas and new lines."""
    items = [item.strip() for item in re.split(r"[,\n]", text or "")]
    items = [item for item in items if item]
    if not items:
        raise _weights_error(node_id, "it is empty",
                             "write phrases of the prompt with weights, e.g. 'cat:1.6, red hat:0.4'")
    pairs = [_parse_item(node_id, item) for item in items]
    _check_unique(node_id, [phrase for phrase, _ in pairs])
    return pairs


def _parse_item(node_id: str, item: str) -> tuple[str, float]:
    """One 'phrase:weight' item."""
    if ":" not in item:
        raise _weights_error(node_id, f"'{item}' has no ':weight'", f"write it as '{item}:1.5' (above 1 strengthens, "
                             "below 1 weakens)")
    phrase, weight_text = (part.strip() for part in item.rsplit(":", 1))
    phrase = " ".join(phrase.split())
    if not phrase:
        raise _weights_error(node_id, f"'{item}' has no phrase before ':'", "put a word of the prompt before the ':'")
    try:
        weight = float(weight_text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise _weights_error(node_id, f"the weight '{weight_text}' of '{phrase}' is not a number",
                             f"write a number after the ':', e.g. '{phrase}:1.5'")
    return phrase, weight


def _check_unique(node_id: str, phrases: list[str]) -> None:
    """Each phrase once (compared case-insensitively: CLIP tokenizers lowercase)."""
    seen = set()
    for phrase in phrases:
        if phrase.casefold() in seen:
            raise _weights_error(node_id, f"'{phrase}' is given twice", "give each phrase one weight")
        seen.add(phrase.casefold())


def _weights_error(node_id: str, problem: str, fix: str) -> ValueError:
    """A node_error on the 'weights' input."""
    return node_error(node_id, "weights", problem, fix)


# -- laying out the context ----------------------------------------------------------------------------------------
def prompt_tokens(node_id: str, clip, family: str, prompt: str, phrases: list[str]) -> PromptTokens:
    """The context's token count for ``prompt`` and, per phrase, its positions in that token axis."""
    if not (prompt or "").strip():
        raise node_error(node_id, "prompt", "it is empty, so there are no words to weight",
                         "give the same prompt text that CLIPTextEncode encodes")
    layout = _layout(node_id, family)
    tokens = clip.tokenize(prompt, return_word_ids=True)
    runs = _runs(node_id, clip, family, layout, tokens)
    positions = {phrase: _phrase_positions(node_id, clip, runs, tokens, phrase) for phrase in phrases}
    return PromptTokens(length=sum(run.length for run in runs), positions=positions)


def _label(family: str) -> str:
    """The family's display name (the name itself when unknown)."""
    return BY_NAME[family].label if family in BY_NAME else family


def _layout(node_id: str, family: str) -> Layout:
    """The family's layout, or a node_error on 'clip' when token weights do not reach it."""
    layout = LAYOUTS.get(family)
    if layout is not None and not layout.unreached:
        return layout
    reached = ", ".join(_label(name) for name, entry in LAYOUTS.items() if not entry.unreached)
    why = f" ({layout.unreached})" if layout is not None else ""
    raise node_error(node_id, "clip", f"token weights do not reach {_label(family)} yet{why}",
                     f"use them with {reached}")


def _runs(node_id: str, clip, family: str, layout: Layout, tokens: dict) -> list[_Run]:
    """The segments that reach the context for this CLIP, with offsets; node_error on 'clip' when none does."""
    segments = layout.segments
    if not any(key in tokens for segment in segments for key in segment.keys) and len(tokens) == 1:
        segments = (Segment((next(iter(tokens)),)),)  # a one-encoder CLIP: its output is the context
    runs, offset = [], 0
    for segment in segments:
        keys = _live_keys(segment, tokens, getattr(clip, "cond_stage_model", None))
        if keys:
            length = min(_token_count(tokens[key]) for key in keys)
            runs.append(_Run(keys[0], offset, length))
            offset += length
    if not runs:
        raise node_error(node_id, "clip", f"this CLIP's text encoder (tokenizer keys: {', '.join(tokens) or 'none'}) "
                         f"does not match the {_label(family)} model",
                         f"connect the {_label(family)} text encoder ({layout.text_encoder}), e.g. the checkpoint's "
                         "own CLIP or a CLIP loader set to that type")
    return runs


def _live_keys(segment: Segment, tokens: dict, encoder) -> tuple[str, ...]:
    """The segment's keys the tokenizer emits and whose text encoder is loaded, in the segment's order."""
    needs = segment.encoders or (None,) * len(segment.keys)
    return tuple(key for key, attr in zip(segment.keys, needs)
                 if key in tokens and (attr is None or getattr(encoder, attr, None) is not None))


def _token_count(batches: list) -> int:
    """Tokens the encoder outputs for one key: its batches concatenated on the token axis."""
    return sum(len(batch) for batch in batches)


# -- finding phrases -----------------------------------------------------------------------------------------------
def _word_tokens(batches: list) -> list[tuple[int | None, int]]:
    """(token id, flat position) of each word token (word id > 0); embeddings (non-int ids) as None."""
    out, flat = [], 0
    for batch in batches:
        for token in batch:
            if token[2] > 0:
                out.append((int(token[0]) if isinstance(token[0], numbers.Integral) else None, flat))
            flat += 1
    return out


def _phrase_ids(clip, key: str, phrase: str) -> list[int]:
    """The token ids the phrase alone gets from the key's tokenizer (word tokens only, embeddings skipped)."""
    batches = clip.tokenize(phrase, return_word_ids=True).get(key, [])
    return [token for token, _ in _word_tokens(batches) if token is not None]


def _occurrences(needle: list[int], words: list[tuple[int | None, int]]) -> set[int]:
    """Flat positions of every occurrence of the id sequence ``needle`` among the word tokens (a phrase may straddle
    a batch boundary: the start/end tokens between are not word tokens)."""
    ids, n = [token for token, _ in words], len(needle)
    hits = set()
    if not needle:
        return hits
    for i in range(len(ids) - n + 1):
        if ids[i:i + n] == needle:
            hits.update(position for _, position in words[i:i + n])
    return hits


def _phrase_positions(node_id: str, clip, runs: list[_Run], tokens: dict, phrase: str) -> tuple[int, ...]:
    """The phrase's positions in the context over all segments; node_error on 'weights' when it is nowhere."""
    found = set()
    for run in runs:
        hits = _occurrences(_phrase_ids(clip, run.key, phrase), _word_tokens(tokens[run.key]))
        found.update(run.offset + p for p in hits if p < run.length)
    if not found:
        words = ", ".join(_prompt_words(clip, runs[0].key, tokens[runs[0].key]))
        raise _weights_error(node_id, f"'{phrase}' is not in the prompt; its words are: {words}",
                             "use words as they appear in the prompt, spelled the same way (the tokenizer matches "
                             "whole words: 'cat' does not match 'cats')")
    return tuple(sorted(found))


# -- listing the prompt's words ------------------------------------------------------------------------------------
def _sub_tokenizer(clip, key: str):
    """The host SDTokenizer behind a tokenizer key (clip_l for 'l', t5xxl or clip_t5xxl for 't5xxl', ...)."""
    for name in (f"clip_{key}", key):
        sub = getattr(clip.tokenizer, name, None)
        if hasattr(sub, "inv_vocab"):
            return sub
    return None


def _prompt_words(clip, key: str, batches: list) -> list[str]:
    """The prompt's words, decoded through the tokenizer's vocabulary, at most MAX_LISTED_WORDS of them."""
    sub = _sub_tokenizer(clip, key)
    inv_vocab = getattr(sub, "inv_vocab", {})
    pieces = [inv_vocab.get(token, f"{token}</w>") if token is not None else _EMBEDDING_PIECE
              for token, _ in _word_tokens(batches)]
    words = [w for w in _join_pieces(pieces) if any(c.isalnum() for c in w)]
    if len(words) > MAX_LISTED_WORDS:
        words = words[:MAX_LISTED_WORDS] + [f"... ({len(words) - MAX_LISTED_WORDS} more)"]
    return words


def _join_pieces(pieces: list[str]) -> list[str]:
    """Sub-word pieces to words: CLIP BPE ends a word with '</w>', sentencepiece starts one with '▁'."""
    words, open_word = [], False
    for piece in pieces:
        starts = piece.startswith("▁") or not open_word
        text = piece.removeprefix("▁").removesuffix("</w>")
        if starts:
            words.append(text)
        else:
            words[-1] += text
        open_word = not piece.endswith("</w>")
    return [w for w in words if w]
