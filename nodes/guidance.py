"""Attention-based guidance nodes: PAG, SEG and skip-layer guidance, all run in one batched extra pass.

Each node stacks a perturbation; however many are stacked, their perturbed predictions come from one batched
model call per step, which joins the cond/uncond call where the host's memory estimate allows.
"""
from __future__ import annotations

import math

import torch
from comfy_api.latest import io

from ..attention.guidance import PAG, SEG, SkipAttention
from ..attention.nag import NAG
from ..attention.sag import SAG
from ..attention.site import CROSS, JOINT, SELF
from .errors import node_error
from .families import DIT, UNET, Family
from .host import add_guidance, dit_block_count, family_of
from .schedule_inputs import build_schedule, schedule_inputs

SCALE_MAX = 100.0
INFINITE_SIGMA = 9999.0  # blur_sigma at or above this: the mean query (SEG's infinite blur)
DEFAULT_BLOCKS_TOOLTIP = ("Which blocks: empty = the model's middle block (UNet 'middle.0', as core's PAG; a DiT's "
                          "middle block); NAG: empty = all blocks. E.g. 'input.7-8, middle.0' or 'double.8-10'.")


def default_blocks(model, family: Family) -> str:
    """The family's middle block: 'middle.0' on UNets, the middle block of a DiT's first block list."""
    if family.arch == UNET:
        return "middle.0"
    group = family.dit_groups[0]
    return f"{group.group}.{dit_block_count(model, group.modules) // 2}"


def check_range(node_id: str, name: str, value: float, lo: float, hi: float, fix: str) -> None:
    if not lo <= value <= hi:
        raise node_error(node_id, name, f"{value} is outside {lo:g}-{hi:g}", fix)


def guidance_schedule(node_id, model, family, start_percent, end_percent, blocks, kind):
    return build_schedule(node_id, model, family, start_percent, end_percent, blocks or default_blocks(model, family),
                          kind)


def _scale_inputs(default: float):
    return [
        io.Float.Input("scale", default=default, min=0.0, max=SCALE_MAX, step=0.1,
                       tooltip="Guidance strength: result = CFG + scale x (cond - perturbed). 0 = off (exactly "
                               "the unpatched output)."),
        io.Float.Input("rescale", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Rescale the guided prediction toward the cond prediction's spread (0 = off); "
                               "tames over-saturation at high scales."),
    ]


def guidance_schema(effect_cls, display_name: str, description: str, extra_inputs=(), kinds=(SELF, JOINT),
                    model_tooltip: str = "The model to patch; it is cloned.", scale_default: float = 3.0):
    """The schema every guidance node shares: model, its own inputs, then the schedule inputs."""
    own = list(extra_inputs) if scale_default is None else [*_scale_inputs(scale_default), *extra_inputs]
    return io.Schema(
        node_id=effect_cls.node_id, display_name=display_name, category="attention_lab/guidance",
        description=description,
        inputs=[io.Model.Input("model", tooltip=model_tooltip), *own,
                *schedule_inputs(kinds, apply_to=False, blocks_tooltip=DEFAULT_BLOCKS_TOOLTIP)],
        outputs=[io.Model.Output(tooltip=f"The model with {display_name} on its Attention Lab stack.")])


def _execute(node_id, effect_cls, model, scale, rescale, start_percent, end_percent, blocks, kind, **extra):
    check_range(node_id, "scale", scale, 0.0, SCALE_MAX, "use 0 (off) to about 10; 3 is typical")
    check_range(node_id, "rescale", rescale, 0.0, 1.0, "use a value from 0 to 1")
    family = family_of(model, node_id)
    schedule = guidance_schedule(node_id, model, family, start_percent, end_percent, blocks, kind)
    effect = effect_cls(schedule, scale=scale, rescale=rescale, **extra)
    return io.NodeOutput(add_guidance(model, effect, node_id))


class AttnLabPAG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return guidance_schema(
            PAG, "Perturbed-Attention Guidance",
            "Perturbed-Attention Guidance (Ahn et al. 2024): a prediction whose self-attention at the selected blocks "
            "is replaced by the identity steers the sample away from structural collapse. Stacked guidance nodes "
            "share one batched extra pass.")

    @classmethod
    def execute(cls, model, scale, rescale, start_percent, end_percent, blocks, kind) -> io.NodeOutput:
        return _execute(PAG.node_id, PAG, model, scale, rescale, start_percent, end_percent, blocks, kind)


class AttnLabSEG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        blur = io.Float.Input("blur_sigma", default=10.0, min=0.1, max=INFINITE_SIGMA, step=0.1,
                              tooltip=f"Gaussian sigma in tokens. {INFINITE_SIGMA:g} = infinite: every query becomes "
                                      "the mean query.")
        return guidance_schema(
            SEG, "Smoothed Energy Guidance",
            "Smoothed Energy Guidance (Hong 2024): a prediction whose self-attention queries are blurred by a "
            "Gaussian over the image grid guides the sample; a larger blur is a stronger, smoother perturbation. "
            "Stacked guidance nodes share one batched extra pass.", extra_inputs=[blur])

    @classmethod
    def execute(cls, model, scale, rescale, blur_sigma, start_percent, end_percent, blocks, kind) -> io.NodeOutput:
        check_range(SEG.node_id, "blur_sigma", blur_sigma, 0.1, INFINITE_SIGMA,
                    f"use 0.1 to {INFINITE_SIGMA:g} ({INFINITE_SIGMA:g} = infinite)")
        sigma = math.inf if blur_sigma >= INFINITE_SIGMA else blur_sigma
        return _execute(SEG.node_id, SEG, model, scale, rescale, start_percent, end_percent, blocks, kind,
                        blur_sigma=sigma)


class AttnLabSkipLayerGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return guidance_schema(
            SkipAttention, "Skip-Layer Guidance (attention)",
            "Skip-layer guidance for DiTs (SD3.5, Flux, WAN, ...): a prediction with the selected blocks' attention "
            "skipped guides the sample, improving structure and anatomy. Stacked guidance nodes share one batched "
            "extra pass.", model_tooltip="A DiT model (SD3/3.5, Flux, WAN, HunyuanVideo, LTXV, Qwen).")

    @classmethod
    def execute(cls, model, scale, rescale, start_percent, end_percent, blocks, kind) -> io.NodeOutput:
        family = family_of(model, SkipAttention.node_id)
        if family.arch != DIT:
            raise node_error(SkipAttention.node_id, "model", f"{family.label} is a UNet; skip-layer guidance "
                             "skips DiT blocks", "use AttnLabPAG or AttnLabSEG on UNet models")
        return _execute(SkipAttention.node_id, SkipAttention, model, scale, rescale, start_percent, end_percent,
                        blocks, kind)


def negative_context(model, family: Family, negative) -> torch.Tensor:
    """The text context of a CONDITIONING, checked against the model's context width."""
    if not negative or not hasattr(negative[0][0], "shape"):
        raise node_error(NAG.node_id, "negative", "it holds no conditioning",
                         "connect a CLIP Text Encode of the negative prompt")
    context = negative[0][0]
    want = family.context_dim(model.model.model_config.unet_config)
    if want is not None and context.shape[-1] != want:
        raise node_error(NAG.node_id, "negative", f"its text features are {context.shape[-1]} wide but this "
                         f"{family.label} model takes {want}", "encode the negative prompt with this model's own "
                         "text encoder (the CLIP from the same checkpoint or loader)")
    return context


class AttnLabNAG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        own = [io.Conditioning.Input("negative", tooltip="The negative prompt, encoded with this model's own text "
                                                         "encoder."),
               io.Float.Input("scale", default=5.0, min=1.0, max=SCALE_MAX, step=0.1,
                              tooltip="Extrapolation away from the negative output; 1 = off."),
               io.Float.Input("tau", default=2.5, min=1.0, max=10.0, step=0.05,
                              tooltip="Upper bound on how much the guided output's norm may grow over the positive "
                                      "output's."),
               io.Float.Input("alpha", default=0.25, min=0.0, max=1.0, step=0.01,
                              tooltip="Blend of guided (1) and plain (0) output; 0 = off.")]
        return guidance_schema(
            NAG, "Normalized Attention Guidance",
            "Normalized Attention Guidance (Chen et al. 2025): in cross-attention (and the image rows of joint "
            "attention) the output for the prompt is pushed away from the output for the negative prompt, "
            "norm-clipped and blended. Gives negative prompts to distilled and few-step models run at cfg 1. The "
            "negative context rides in the same batched call.", extra_inputs=own, kinds=(CROSS, JOINT),
            scale_default=None)

    @classmethod
    def execute(cls, model, negative, scale, tau, alpha, start_percent, end_percent, blocks,
                kind) -> io.NodeOutput:
        check_range(NAG.node_id, "scale", scale, 1.0, SCALE_MAX, "use 1 (off) to about 10; 5 is typical")
        check_range(NAG.node_id, "tau", tau, 1.0, 10.0, "use 1 to 10; 2.5 is typical")
        check_range(NAG.node_id, "alpha", alpha, 0.0, 1.0, "use 0 to 1; 0.25 is typical")
        family = family_of(model, NAG.node_id)
        context = negative_context(model, family, negative)
        schedule = build_schedule(NAG.node_id, model, family, start_percent, end_percent, blocks, kind)
        effect = NAG(schedule, context, scale=scale, tau=tau, alpha=alpha)
        return io.NodeOutput(add_guidance(model, effect, NAG.node_id))


class AttnLabSAG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        own = [io.Float.Input("scale", default=0.5, min=-2.0, max=5.0, step=0.01,
                              tooltip="Guidance strength; 0 = off (exactly the unpatched output). Core's default "
                                      "is 0.5."),
               io.Float.Input("blur_sigma", default=2.0, min=0.1, max=10.0, step=0.1,
                              tooltip="Gaussian sigma (in latent pixels) of the blur applied where attention "
                                      "concentrates.")]
        return guidance_schema(
            SAG, "Self-Attention Guidance",
            "Self-Attention Guidance (Hong et al. 2023): where the negative pass's self-attention concentrates, its "
            "prediction is blurred, re-noised and predicted again, and the sample is pushed away from that. With "
            "the defaults (the UNet middle block) the output equals core's Self-Attention Guidance. Needs cfg > 1 "
            "or keeps the uncond pass at cfg 1; costs one extra pass per step (its input differs).",
            extra_inputs=own, scale_default=None)

    @classmethod
    def execute(cls, model, scale, blur_sigma, start_percent, end_percent, blocks, kind) -> io.NodeOutput:
        check_range(SAG.node_id, "scale", scale, -2.0, 5.0, "use -2 to 5; 0.5 is core's default")
        check_range(SAG.node_id, "blur_sigma", blur_sigma, 0.1, 10.0, "use 0.1 to 10; 2 is core's default")
        family = family_of(model, SAG.node_id)
        schedule = guidance_schedule(SAG.node_id, model, family, start_percent, end_percent, blocks, kind)
        effect = SAG(schedule, scale=scale, blur_sigma=blur_sigma)
        return io.NodeOutput(add_guidance(model, effect, SAG.node_id, needs_uncond=True))
