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
from .dispatch import PLAN_KEY, STACK_KEY
_stash = threading.local()


def active_perturbations(options: dict, sigma: float) -> tuple[Perturbation, ...]:
    stack = options.get("transformer_options", {}).get(STACK_KEY)
    if stack is None:
        return ()
    return tuple(e for e in stack.live if isinstance(e, Perturbation) and e.schedule.active_at(sigma))


def _with_plan(options: dict, plan: tuple) -> dict:
    return {**options, "transformer_options": {**options.get("transformer_options", {}), PLAN_KEY: plan}}


def guidance_batch_wrapper(executor, model, conds, x_in, timestep, model_options):
    """Adds the perturbed chunks to the main [cond, uncond] call and keeps their predictions for this step."""
    to = model_options.get("transformer_options", {})
    if PLAN_KEY in to or len(conds) != 2 or conds[0] is None:
        return executor(model, conds, x_in, timestep, model_options)
    plan = active_perturbations(model_options, float(timestep.max()))
    if not plan:
        return executor(model, conds, x_in, timestep, model_options)
    out = executor(model, list(conds) + [conds[0]] * len(plan), x_in, timestep,
                   _with_plan(model_options, (None, None) + plan))
    _stash.entry = (x_in, plan, out[2:])
    return out[:2]


def _take(x: torch.Tensor):
    entry = getattr(_stash, "entry", None)
    _stash.entry = None
    if entry is not None and entry[0] is x:
        return entry[1], entry[2]
    return None, None


def perturbed_predictions(model, cond, x, sigma, options, plan) -> list:
    """The perturbed predictions of ``plan``, in one batched call. Chunk labels start at 2 (empty slots 0 and 1),
    so no effect mistakes a perturbed chunk for the uncond one."""
    import comfy.samplers
    conds = [None, None] + [cond] * len(plan)
    return comfy.samplers.calc_cond_batch(model, conds, x, sigma, _with_plan(options, (None, None) + plan))[2:]


def apply_guidance(args: dict) -> torch.Tensor:
    """Post-CFG: denoised + sum of scale_i * (cond - perturbed_i), each with its rescale."""
    denoised, x = args["denoised"], args["input"]
    plan, preds = _take(x)
    if plan is None:
        plan = active_perturbations(args["model_options"], float(args["sigma"].max()))
        if not plan:
            return denoised
        preds = perturbed_predictions(args["model"], args["cond"], x, args["sigma"], args["model_options"], plan)
    for perturbation, pred in zip(plan, preds):
        denoised = perturbation.guide(denoised, args["cond_denoised"], pred)
    return denoised


apply_guidance._attnlab = True
