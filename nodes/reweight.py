"""AttnLabTokenWeights: emphasise or soften words of a prompt in attention (Prompt-to-Prompt's reweighting)."""
from __future__ import annotations

from comfy_api.latest import io

from ..attention.reweight import MODES, TokenWeighting, TokenWeights
from ..attention.site import CROSS, JOINT
from .errors import node_error
from .host import add_effect, family_of
from .schedule_inputs import build_schedule, check_text_attention, schedule_inputs
from .tokens import parse_weights, prompt_tokens

NODE_ID = "AttnLabTokenWeights"
WEIGHT_RANGE = (-10.0, 10.0)


def check_weights(pairs: list[tuple[str, float]], mode: str) -> None:
    lo, hi = WEIGHT_RANGE
    for phrase, weight in pairs:
        if not lo <= weight <= hi:
            raise node_error(NODE_ID, "weights", f"the weight {weight:g} of '{phrase}' is outside {lo:g}-{hi:g}",
                             "use weights from about 0 to 3; 1 = unchanged")
        if weight < 0 and not MODES[mode][1]:
            raise node_error(NODE_ID, "weights", f"'{phrase}' has a negative weight, which mode '{mode}' cannot "
                             "apply (a log-weight)", "use mode 'p2p' for negative weights, or a weight of 0 or more")


def weighting(clip, family, prompt: str, pairs: list[tuple[str, float]]) -> TokenWeighting:
    """Token positions of each phrase in the prompt's context, with their weights, and the prompt's encoding (to
    find, while sampling, the batch items that carry it)."""
    tokens = prompt_tokens(NODE_ID, clip, family.name, prompt, [p for p, _ in pairs])
    context = clip.encode_from_tokens(clip.tokenize(prompt))
    if context.shape[1] != tokens.length:
        raise node_error(NODE_ID, "clip", f"this CLIP encodes the prompt to {context.shape[1]} tokens where "
                         f"{family.label}'s text encoders give {tokens.length}",
                         f"connect the CLIP loaded for this {family.label} model")
    weights = {pos: w for phrase, w in pairs for pos in tokens.positions[phrase]}
    return TokenWeighting(tokens.length, tuple(sorted(weights.items())), context[:1].detach().cpu())


class AttnLabTokenWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_ID, display_name="Attention Token Weights", category="attention_lab/reweight",
            description="Reweights the attention image tokens pay to chosen words of the prompt (Prompt-to-Prompt, "
                        "Hertz et al. 2022). Cross-attention on UNets and WAN, the image-to-text part of joint "
                        "attention on SD3 and Flux. Type the same prompt as the CLIP Text Encode you sample with.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; it is cloned."),
                io.Clip.Input("clip", tooltip="The CLIP that encodes the prompt (finds the words' tokens)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The positive prompt exactly as encoded for the sampler."),
                io.String.Input("weights", default="",
                                tooltip="Words or phrases of the prompt with weights: 'cat:1.6, red hat:0.4'. "
                                        "1 = unchanged, 2 = twice the attention, 0 = ignored; negative weights "
                                        "push away (p2p mode only)."),
                io.Combo.Input("mode", options=list(MODES), default="p2p",
                               tooltip="p2p: multiply the words' attention without renormalising (Prompt-to-"
                                       "Prompt; strong). renormalise: a log-weight on their scores, the others "
                                       "give way (gentler)."),
                *schedule_inputs((CROSS, JOINT), apply_to=True, apply_to_default="cond"),
            ],
            outputs=[io.Model.Output(tooltip="The model with the token weights on its Attention Lab stack.")])

    @classmethod
    def execute(cls, model, clip, prompt, weights, mode, start_percent, end_percent, blocks, kind,
                apply_to) -> io.NodeOutput:
        family = family_of(model, NODE_ID)
        check_text_attention(NODE_ID, family)
        if clip is None:
            raise node_error(NODE_ID, "clip", "no CLIP is connected", "connect the CLIP that encodes the prompt")
        pairs = parse_weights(NODE_ID, weights)
        check_weights(pairs, mode)
        schedule = build_schedule(NODE_ID, model, family, start_percent, end_percent, blocks, kind, apply_to)
        effect = TokenWeights(schedule, weighting(clip, family, prompt, pairs), mode=mode)
        return io.NodeOutput(add_effect(model, effect, NODE_ID))
