"""Regional prompting nodes: AttnLabRegion (a prompt and a mask, chainable into a REGIONS list) and
AttnLabRegionalPrompt (the effect on the MODEL, and the joined CONDITIONING to sample with).

All regions run inside the one model call of the base prompt: their tokens are joined to the base prompt's, and
attention decides which image tokens see which prompt.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..attention.regional import MODES, RegionalPrompt, RegionSet
from ..attention.regions import text_labels
from ..attention.site import CROSS, JOINT, SELF
from .errors import node_error
from .host import add_context_batching, add_effect, family_of
from .schedule_inputs import build_schedule, check_text_attention, schedule_inputs

log = logging.getLogger("attnlab")
REGION_ID, REGIONAL_ID = "AttnLabRegion", "AttnLabRegionalPrompt"
Regions = io.Custom("ATTNLAB_REGIONS")
STRENGTH_MAX = 4.0
MASK_KEY = "attention_mask"  # text-token masks some families' conditionings carry; joined with the tokens


@dataclass(frozen=True)
class Region:
    """One region: its prompt's tokens (1 T C), the conditioning's other keys, a mask F H W, a strength."""

    context: torch.Tensor
    extras: dict
    mask: torch.Tensor
    strength: float


def region_mask(mask: torch.Tensor) -> torch.Tensor:
    """A MASK (H W or F H W) -> F H W float in [0, 1]; warns when it selects nothing or everything."""
    mask = mask.float().clamp(0, 1)
    mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
    if mask.ndim != 3:
        raise node_error(REGION_ID, "mask", f"expected a mask of shape (frames, height, width), got "
                         f"{tuple(mask.shape)}", "connect a MASK (from Load Image, a mask editor or a mask node)")
    if float(mask.max()) == 0:
        log.warning("%s: input 'mask' is empty, so this region's prompt reaches no image token.", REGION_ID)
    elif float(mask.min()) == 1:
        log.warning("%s: input 'mask' covers the whole image, so this region acts like part of the base prompt.",
                    REGION_ID)
    return mask


def region_prompt(conditioning) -> tuple[torch.Tensor, dict]:
    """The first entry of a CONDITIONING: its tokens (1 T C) and other keys."""
    if not conditioning:
        raise node_error(REGION_ID, "conditioning", "the conditioning is empty", "connect a CLIP Text Encode output")
    if len(conditioning) > 1:
        log.warning("%s: the conditioning has %d entries; the region uses the first.", REGION_ID, len(conditioning))
    tokens, extras = conditioning[0]
    return tokens[:1], dict(extras)


class AttnLabRegion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=REGION_ID, display_name="Attention Region", category="attention_lab/regions",
            description="One region of a regional prompt: a prompt and the mask where it applies. Chain several "
                        "into AttnLabRegionalPrompt; prompts of any length, masks of any size (a batch of masks "
                        "maps frame by frame on video models).",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The region's prompt (CLIP Text Encode with the "
                                      "same CLIP as the base prompt)."),
                io.Mask.Input("mask", tooltip="Where the prompt applies (1 = inside). Any resolution; soft edges "
                              "blend; overlapping regions share. A batch: one mask per video frame."),
                io.Float.Input("strength", default=1.0, min=0.0, max=STRENGTH_MAX, step=0.05,
                               tooltip="How strongly the region's prompt holds inside its mask. 0 = off; 1 = "
                                       "normal; above 1 = the region's words outweigh the base prompt there."),
                Regions.Input("regions", optional=True, tooltip="Regions from earlier AttnLabRegion nodes; this "
                              "one is appended."),
            ],
            outputs=[Regions.Output(display_name="regions", tooltip="The region list, for AttnLabRegionalPrompt "
                                    "or another AttnLabRegion.")])

    @classmethod
    def execute(cls, conditioning, mask, strength, regions=None) -> io.NodeOutput:
        if not 0.0 <= strength <= STRENGTH_MAX:
            raise node_error(REGION_ID, "strength", f"{strength:g} is outside 0-{STRENGTH_MAX:g}",
                             "use 0 (off) to 4; 1 is normal")
        tokens, extras = region_prompt(conditioning)
        region = Region(tokens, extras, region_mask(mask), float(strength))
        return io.NodeOutput(tuple(regions or ()) + (region,))


def stack_masks(regions: tuple[Region, ...]) -> torch.Tensor:
    """Region masks -> R F H W at the largest size among them (frame counts must agree or be 1)."""
    height = max(r.mask.shape[1] for r in regions)
    width = max(r.mask.shape[2] for r in regions)
    frames = {r.mask.shape[0] for r in regions} - {1}
    if len(frames) > 1:
        raise node_error(REGIONAL_ID, "regions", f"the regions' mask batches have different frame counts "
                         f"({', '.join(str(f) for f in sorted(frames))})", "give every region one mask, or the "
                         "same number of masks (one per frame)")
    count = frames.pop() if frames else 1
    out = [F.interpolate(r.mask[:, None], size=(height, width), mode="bilinear")[:, 0].expand(count, -1, -1)
           for r in regions]
    return torch.stack(out)


def _check_widths(base: torch.Tensor, regions: tuple[Region, ...]) -> None:
    for i, region in enumerate(regions):
        if region.context.shape[-1] != base.shape[-1]:
            raise node_error(REGIONAL_ID, "regions", f"region {i + 1}'s prompt has width "
                             f"{region.context.shape[-1]}, the base prompt {base.shape[-1]}",
                             "encode every region's prompt with the same CLIP as the base prompt")


def _joined_mask(base_extras: dict, regions: tuple[Region, ...], batch: int):
    """The base entry's text-token mask joined with the regions' (ones where a region has none), or None."""
    if MASK_KEY not in base_extras:
        return None
    parts = [base_extras[MASK_KEY]]
    for r in regions:
        mask = r.extras.get(MASK_KEY)
        parts.append(mask[:1].expand(batch, -1) if mask is not None
                     else parts[0].new_ones(batch, r.context.shape[1]))
    return torch.cat(parts, dim=1)


def join_conditioning(conditioning, regions: tuple[Region, ...]):
    """Each base entry with every region's tokens appended -> (CONDITIONING, joined contexts, their labels)."""
    out, contexts, labels = [], [], []
    for tokens, extras in conditioning:
        _check_widths(tokens, regions)
        batch = tokens.shape[0]
        joined = torch.cat([tokens] + [r.context.to(tokens).expand(batch, -1, -1) for r in regions], dim=1)
        extras = dict(extras)
        mask = _joined_mask(extras, regions, batch)
        if mask is not None:
            extras[MASK_KEY] = mask
        out.append([joined, extras])
        lab = text_labels(tokens.shape[1], tuple(r.context.shape[1] for r in regions))
        contexts += [joined[i:i + 1].detach().clone() for i in range(batch)]
        labels += [lab] * batch
    return out, tuple(contexts), tuple(labels)


class AttnLabRegionalPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=REGIONAL_ID, display_name="Attention Regional Prompt", category="attention_lab/regions",
            description="Regional prompting inside attention, in one model pass: image tokens inside a region "
                        "attend to the base prompt and that region's prompt, outside to the base prompt only. "
                        "Works on UNets (SD1.5/SD2/SDXL) and DiTs (SD3, Flux, WAN, ...). Sample with the "
                        "CONDITIONING this node returns.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; it is cloned."),
                io.Conditioning.Input("conditioning", tooltip="The base prompt: what the whole image shows."),
                Regions.Input("regions", tooltip="Regions from AttnLabRegion nodes."),
                io.Combo.Input("mode", options=list(MODES), default="hard",
                               tooltip="hard: region prompts are seen only inside their masks (cheap, fused "
                                       "kernel). dense: DenseDiffusion's soft modulation, strong early and fading "
                                       "(explicit maps, slower). paint: eDiff-I's paint-with-words bias on each "
                                       "region's words inside its mask (region words stay visible elsewhere)."),
                io.Float.Input("isolation", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Keeps regions' image tokens from attending to each other in self-"
                                       "attention, so subjects stop bleeding together. 0 = off, 1 = fully apart."),
                io.Float.Input("weight", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Strength of the dense and paint modes (DenseDiffusion's lambda, eDiff-I's "
                                       "w). Ignored by hard mode."),
                *schedule_inputs((SELF, CROSS, JOINT), apply_to=True, apply_to_default="cond"),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with regional prompting on its "
                                     "Attention Lab stack."),
                     io.Conditioning.Output(display_name="conditioning", tooltip="The base prompt with every "
                                            "region's prompt joined: use it as the sampler's positive.")])

    @classmethod
    def execute(cls, model, conditioning, regions, mode, isolation, weight, start_percent, end_percent, blocks,
                kind, apply_to) -> io.NodeOutput:
        family = family_of(model, REGIONAL_ID)
        check_text_attention(REGIONAL_ID, family)
        if not regions:
            raise node_error(REGIONAL_ID, "regions", "the region list is empty", "connect AttnLabRegion nodes")
        if not conditioning:
            raise node_error(REGIONAL_ID, "conditioning", "the conditioning is empty",
                             "connect a CLIP Text Encode output")
        masks = stack_masks(tuple(regions))
        if family.vae_temporal == 1 and masks.shape[1] > 1:
            raise node_error(REGIONAL_ID, "regions", f"the region masks are batches of {masks.shape[1]}, but "
                             f"{family.label} makes single images", "give each region one mask (batches of masks "
                             "are for video models, one per frame)")
        schedule = build_schedule(REGIONAL_ID, model, family, start_percent, end_percent, blocks, kind, apply_to)
        joined, contexts, labels = join_conditioning(conditioning, tuple(regions))
        region_set = RegionSet(contexts, labels, masks, tuple(r.strength for r in regions),
                               family.vae_temporal)
        effect = RegionalPrompt(schedule, region_set, mode=mode, isolation=isolation, weight=weight)
        if effect.neutral:
            return io.NodeOutput(add_effect(model, effect, REGIONAL_ID), conditioning)
        return io.NodeOutput(add_context_batching(add_effect(model, effect, REGIONAL_ID), family), joined)
