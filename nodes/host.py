"""The one module that talks to the host's patch API: clone the MODEL, stack the effect, install the hooks.

Hooks are installed once per model chain and composed with what is there: the attention override chains to
the previous one, DiT block replaces chain to earlier replaces, UNet patch lists are appended to. The incoming
ModelPatcher is never mutated; every dict written is a fresh copy.
"""
from __future__ import annotations

import logging

from ..attention.effect import Effect
from ..attention.stack import EffectStack
from .dispatch import (FAMILY_KEY, STACK_KEY, BlockTagger, Dispatcher, UnetCheck, UnetTag, apply_model_wrapper,
                       callable_name, is_ours, sampler_run_wrapper)
from .batching import context_batching_wrapper
from .guidance_runtime import apply_guidance, guidance_batch_wrapper
from .families import UNET, Family, family_of_config, supported_labels
from .errors import node_error

log = logging.getLogger("attnlab")

OVERRIDE_KEY = "optimized_attention_override"
WRAPPER_KEY = "attnlab"
CONTEXT_BATCHING_KEY = "attnlab_context_batching"
_UNET_PATCHES = (("attn1_patch", UnetTag("self")), ("attn2_patch", UnetTag("cross")),
                 ("attn1_output_patch", UnetCheck("attn1")), ("attn2_output_patch", UnetCheck("attn2")))


def family_of(model, node_id: str) -> Family:
    """The model's family; a ValueError naming the node when Attention Lab cannot reach it."""
    config = getattr(model.model, "model_config", None)
    family = family_of_config(config)
    if family is None:
        name = type(config).__name__ if config is not None else type(model.model).__name__
        raise node_error(node_id, "model", f"the model family '{name}' is not one Attention Lab reaches",
                         f"use a model of a supported family ({supported_labels()})")
    return family


def effect_stack(model) -> EffectStack:
    """The effects stacked on ``model`` so far, in graph order."""
    return model.model_options.get("transformer_options", {}).get(STACK_KEY) or EffectStack()


def add_effect(model, effect: Effect, node_id: str):
    """A clone of ``model`` with ``effect`` appended to its stack and the engine's hooks in place."""
    family = family_of(model, node_id)
    m = model.clone()
    to = dict(m.model_options.get("transformer_options", {}))
    m.model_options = {**m.model_options, "transformer_options": to}
    to[STACK_KEY] = effect_stack(model).with_effect(effect)
    to[FAMILY_KEY] = family.name
    _install_override(to)
    _install_wrapper(m)
    if family.arch == UNET:
        _install_unet_tags(to)
    else:
        _install_block_taggers(m, family)
    return m


def add_guidance(model, effect: Effect, node_id: str, needs_uncond: bool = False):
    """add_effect, plus the guidance runner (one batched pass for all perturbations, a post-CFG term).
    ``needs_uncond``: keep the uncond pass even at cfg 1 (SAG reads the uncond prediction)."""
    import comfy.patcher_extension as pe

    m = add_effect(model, effect, node_id)
    if needs_uncond:
        m.model_options["disable_cfg1_optimization"] = True
    if not m.get_wrappers(pe.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY):
        m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, guidance_batch_wrapper)
    if apply_guidance not in m.model_options.get("sampler_post_cfg_function", []):
        m.set_model_sampler_post_cfg_function(apply_guidance)
    return m


def add_context_batching(model, family: Family):
    """Keep ``model``'s long joined prompts batchable with shorter ones (see nodes.batching); ``model`` is a clone
    the caller owns."""
    import comfy.patcher_extension as pe

    if not model.get_wrappers(pe.WrappersMP.CALC_COND_BATCH, CONTEXT_BATCHING_KEY):
        model.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, CONTEXT_BATCHING_KEY,
                                   context_batching_wrapper(family.repeatable_context))
    return model


def _install_override(to: dict) -> None:
    current = to.get(OVERRIDE_KEY)
    if is_ours(current):
        return
    if current is not None:
        log.info("Attention Lab: chaining to the attention override already installed (%s)", callable_name(current))
    to[OVERRIDE_KEY] = Dispatcher(prev=current)


def _install_wrapper(m) -> None:
    import comfy.patcher_extension as pe

    for kind, wrapper in ((pe.WrappersMP.APPLY_MODEL, apply_model_wrapper),
                          (pe.WrappersMP.SAMPLER_SAMPLE, sampler_run_wrapper)):
        if not m.get_wrappers(kind, WRAPPER_KEY):
            m.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)


def _install_unet_tags(to: dict) -> None:
    patches = dict(to.get("patches", {}))
    for name, patch in _UNET_PATCHES:
        current = list(patches.get(name, []))
        if patch not in current:
            patches[name] = current + [patch]
    to["patches"] = patches


def dit_block_count(model, module_list: str) -> int:
    blocks = getattr(model.model.diffusion_model, module_list, None)
    return len(blocks) if blocks is not None else 0


def _install_block_taggers(m, family: Family) -> None:
    to = m.model_options["transformer_options"]
    replaces = dict(to.get("patches_replace", {}))
    dit = dict(replaces.get("dit", {}))
    for group in family.dit_groups:
        for i in range(dit_block_count(m, group.modules)):
            key = (group.replace_kind, i)
            current = dit.get(key)
            if not is_ours(current):
                if current is not None:
                    log.info("Attention Lab: chaining to the block replace at %s (%s)", key, callable_name(current))
                dit[key] = BlockTagger(group, i, prev=current)
    replaces["dit"] = dit
    to["patches_replace"] = replaces
