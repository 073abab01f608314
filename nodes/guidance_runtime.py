"""Runtime of attention guidance: every active perturbation runs in ONE batched pass per step.

``guidance_batch_wrapper`` (a CALC_COND_BATCH wrapper) appends one copy of the positive cond per active
perturbation to the main cond/uncond call, with a plan in ``transformer_options`` that tells each perturbation
its chunk; the host batches them into the same model call where its memory estimate allows. ``apply_guidance``
(a post-CFG function) adds each perturbation's term. If the main call did not carry the chunks (another
guider, another calc function), it runs them itself, still as one batched call.
"""
from __future__ import annotations

import threading

import torch

from ..attention.guidance import Perturbation
from ..attention.nag import NAG, NegativeChunk
from ..attention.sag import SAG, StepState
from .dispatch import PLAN_KEY, STACK_KEY, STEP_KEY, warn_once
_stash = threading.local()


def active_guidance(options: dict, sigma: float, kinds=(Perturbation, NAG, SAG)) -> tuple:
    """The stack's guidance effects (perturbations, NAG) active at ``sigma``, in stack order."""
    stack = options.get("transformer_options", {}).get(STACK_KEY)
    if stack is None:
        return ()
    return tuple(e for e in stack.live if isinstance(e, kinds) and e.schedule.active_at(sigma))


def _companion(cond: list, context: torch.Tensor) -> list:
    """The positive cond with its text context swapped for a negative one (for NAG's companion chunk)."""
    import comfy.conds
    out = []
    for c in cond:
        model_conds = dict(c["model_conds"], c_crossattn=comfy.conds.CONDCrossAttn(context))
        if "attention_mask" in model_conds:  # a text mask (LTXV, HunyuanVideo): all negative tokens are valid
            model_conds["attention_mask"] = comfy.conds.CONDRegular(torch.ones(context.shape[:2], dtype=torch.long))
        out.append({**c, "model_conds": model_conds})
    return out


def _batches_with(cond: list, context: torch.Tensor) -> bool:
    """Whether the host will put a chunk with this text context into the same model call as ``cond``."""
    import comfy.conds
    own = cond[0]["model_conds"].get("c_crossattn")
    return own is None or comfy.conds.CONDCrossAttn(context).can_concat(own)


def _usable(effect, cond: list) -> bool:
    if not isinstance(effect, NAG) or _batches_with(cond, effect.negative_context):
        return True
    length = effect.negative_context.shape[1]
    warn_once(("nag-length", length), "Attention Lab: NAG skipped: the negative prompt encodes to %d tokens, which "
              "the host will not batch with the prompt's %d (NAG needs both in one model call). Make the two prompts "
              "encode to the same length (shorten the longer one).", length, cond[0]["model_conds"]["c_crossattn"]
              .cond.shape[1])
    return False


def _chunk(effect, cond: list):
    if isinstance(effect, NAG):
        return NegativeChunk(effect), _companion(cond, effect.negative_context)
    return effect, cond


def _with_plan(options: dict, plan: tuple, step_state: StepState | None = None) -> dict:
    to = {**options.get("transformer_options", {}), PLAN_KEY: plan}
    if step_state is not None:
        to[STEP_KEY] = step_state
    return {**options, "transformer_options": to}


def guidance_batch_wrapper(executor, model, conds, x_in, timestep, model_options):
    """Adds the perturbed chunks to the main [cond, uncond] call and keeps their predictions for this step."""
    to = model_options.get("transformer_options", {})
    if PLAN_KEY in to or len(conds) != 2 or conds[0] is None:
        return executor(model, conds, x_in, timestep, model_options)
    effects = tuple(e for e in active_guidance(model_options, float(timestep.max())) if _usable(e, conds[0]))
    if not effects:
        return executor(model, conds, x_in, timestep, model_options)
    chunks = [_chunk(e, conds[0]) for e in effects if not isinstance(e, SAG)]
    plan, extra = (tuple(t) for t in zip(*chunks)) if chunks else ((), ())
    step_state = StepState()
    out = executor(model, list(conds) + list(extra), x_in, timestep,
                   _with_plan(model_options, (None, None) + plan, step_state))
    _stash.entry = (x_in, [(p, pred) for p, pred in zip(plan, out[2:]) if isinstance(p, Perturbation)], step_state)
    return out[:2]


def _take(x: torch.Tensor) -> tuple[list, StepState] | tuple[None, None]:
    entry = getattr(_stash, "entry", None)
    _stash.entry = None
    return (entry[1], entry[2]) if entry is not None and entry[0] is x else (None, None)


def perturbed_predictions(model, cond, x, sigma, options, plan) -> list:
    """The perturbed predictions of ``plan``, in one batched call. Chunk labels start at 2 (empty slots 0 and 1),
    so no effect mistakes a perturbed chunk for the uncond one."""
    import comfy.samplers
    conds = [None, None] + [cond] * len(plan)
    return comfy.samplers.calc_cond_batch(model, conds, x, sigma, _with_plan(options, (None, None) + plan))[2:]


def apply_guidance(args: dict) -> torch.Tensor:
    """Post-CFG: denoised + sum of scale_i * (cond - perturbed_i), each with its rescale; then SAG's terms."""
    denoised, x = args["denoised"], args["input"]
    pairs, step_state = _take(x)
    if pairs is None:
        pairs, step_state = _fallback(args), StepState()
    for perturbation, pred in pairs:
        denoised = perturbation.guide(denoised, args["cond_denoised"], pred)
    for sag in active_guidance(args["model_options"], float(args["sigma"].max()), kinds=(SAG,)):
        denoised = _apply_sag(sag, step_state.records.get(sag), denoised, args)
    return denoised


def _apply_sag(sag: SAG, recorded, denoised: torch.Tensor, args: dict) -> torch.Tensor:
    """cfg + scale * (degraded - prediction of the re-noised degraded uncond), as Hong et al. 2023."""
    import comfy.samplers
    x0, uncond = args["uncond_denoised"], args["uncond"]
    if recorded is None or uncond is None or min(x0.shape[-2:]) <= 4:
        return denoised
    degraded = sag.degrade(x0, recorded)
    noised = degraded + args["input"] - x0
    (pred,) = comfy.samplers.calc_cond_batch(args["model"], [uncond], noised, args["sigma"], args["model_options"])
    return denoised + (degraded - pred) * sag.scale


def _fallback(args: dict) -> list:
    """When the main call did not carry the guidance chunks: perturbations in one extra call; NAG cannot run."""
    sigma = float(args["sigma"].max())
    if active_guidance(args["model_options"], sigma, kinds=(NAG,)):
        warn_once("nag-main-call", "Attention Lab: NAG needs the sampler's own cond pass, which another node "
                  "replaced here; NAG is skipped. Put NAG where the sampler's normal cond/uncond call runs.")
    plan = active_guidance(args["model_options"], sigma, kinds=(Perturbation,))
    if not plan:
        return []
    preds = perturbed_predictions(args["model"], args["cond"], args["input"], args["sigma"], args["model_options"],
                                  plan)
    return list(zip(plan, preds))


apply_guidance._attnlab = True
