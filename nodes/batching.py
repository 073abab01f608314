"""Keeping long joined prompts batchable: a CALC_COND_BATCH wrapper that repeats shorter text contexts.

The host batches conds whose cross-attention contexts differ in length by repeating the shorter one (attention
over a repeated context equals attention over the original), but only up to 4 copies. A regional prompt joins
the base prompt with every region's, so its context is often 5 or more times the negative prompt's, and the host
would run cond and uncond as two model calls. This wrapper repeats each shorter context that divides the longest
one up to its length before the host decides, so they still share one call. Contexts that do not divide, and conds
the host cannot repeat (other cond classes), are left alone.
"""
from __future__ import annotations


def _context_length(cond: dict) -> int | None:
    import comfy.conds
    c = cond.get("model_conds", {}).get("c_crossattn")
    return c.cond.shape[1] if isinstance(c, comfy.conds.CONDCrossAttn) else None


def _repeated(cond: dict, length: int) -> dict:
    """A copy of ``cond`` whose context is repeated to ``length`` tokens (when it divides ``length``)."""
    import comfy.conds
    n = _context_length(cond)
    if n is None or n >= length or length % n:
        return cond
    context = cond["model_conds"]["c_crossattn"].cond
    model_conds = {**cond["model_conds"], "c_crossattn": comfy.conds.CONDCrossAttn(context.repeat(1, length // n, 1))}
    return {**cond, "model_conds": model_conds}


def even_out(conds: list) -> list:
    """conds (lists of cond dicts, or None) -> the same with shorter contexts repeated to the longest one's length."""
    lengths = [n for group in conds if group for c in group if (n := _context_length(c)) is not None]
    if len(set(lengths)) < 2:
        return conds
    longest = max(lengths)
    return [None if group is None else [_repeated(c, longest) for c in group] for group in conds]


def repeat_short_contexts(executor, model, conds, x_in, timestep, model_options):
    """CALC_COND_BATCH wrapper: see the module docstring."""
    return executor(model, even_out(conds), x_in, timestep, model_options)
