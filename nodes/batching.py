"""Keeping long joined prompts batchable: a CALC_COND_BATCH wrapper that repeats shorter text contexts.

The host batches conds whose cross-attention contexts differ in length by repeating the shorter one (attention
over a repeated context equals attention over the original), but only up to 4 copies. A regional prompt joins
the base prompt with every region's, so its context is often 5 or more times the negative prompt's, and the host
would run cond and uncond as two model calls. This wrapper repeats each shorter context that divides the longest
one up to its length before the host decides, so they still share one call. DiTs whose text is attended only by
cross-attention (WAN) hold their context in a cond class the host never repeats; there the wrapper repeats it too
(``cross_only``), since a repeated context is again exact. Not in joint attention (SD3, Flux): there the image
tokens are keys too, and repeated text would take a larger share. Contexts that do not divide, and other cond
classes, are left alone.
"""
from __future__ import annotations

import functools


def _context(cond: dict, cross_only: bool):
    """The cond's text context object when the wrapper may repeat it, else None."""
    import comfy.conds
    c = cond.get("model_conds", {}).get("c_crossattn")
    if isinstance(c, comfy.conds.CONDCrossAttn) or (cross_only and type(c) is comfy.conds.CONDRegular):
        return c
    return None


def _repeated(cond: dict, length: int, cross_only: bool) -> dict:
    """A copy of ``cond`` whose context is repeated to ``length`` tokens (when it divides ``length``)."""
    c = _context(cond, cross_only)
    n = c.cond.shape[1] if c is not None else None
    if n is None or n >= length or length % n:
        return cond
    model_conds = {**cond["model_conds"], "c_crossattn": type(c)(c.cond.repeat(1, length // n, 1))}
    return {**cond, "model_conds": model_conds}


def even_out(conds: list, cross_only: bool = False) -> list:
    """conds (lists of cond dicts, or None) -> the same with shorter contexts repeated to the longest one's length."""
    lengths = [c.cond.shape[1] for group in conds if group for cond in group
               if (c := _context(cond, cross_only)) is not None]
    if len(set(lengths)) < 2:
        return conds
    longest = max(lengths)
    return [None if group is None else [_repeated(c, longest, cross_only) for c in group] for group in conds]


def repeat_short_contexts(executor, model, conds, x_in, timestep, model_options, cross_only: bool = False):
    """CALC_COND_BATCH wrapper: see the module docstring."""
    return executor(model, even_out(conds, cross_only), x_in, timestep, model_options)


def context_batching_wrapper(cross_only: bool):
    """The wrapper for a family: ``cross_only`` when its text is attended only by cross-attention."""
    return functools.partial(repeat_short_contexts, cross_only=cross_only)
