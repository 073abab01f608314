"""Finding a known prompt among the batch items of a model call, by the content of their text context.

The host batches several conditionings into one call, in any order, and repeats a shorter context to the length
of a longer one. Effects tied to one prompt compare each item's context with that prompt's encoding: one host
sync per model call.
"""
from __future__ import annotations

import torch

REPEAT, PREFIX = "repeat", "prefix"  # the item's context is the prompt repeated, or starts with the prompt


def _close(a: torch.Tensor, ref: torch.Tensor, tol: float) -> torch.Tensor:
    """a: b t C, ref: 1 t C -> b bool: every value within tol (relative to ref's largest)."""
    return (a - ref).abs().flatten(1).amax(dim=1) <= tol * (1 + ref.abs().amax())


def context_matches(context: torch.Tensor, ref: torch.Tensor, tol: float = 1e-3) -> tuple[torch.Tensor,
                                                                                          torch.Tensor]:
    """context: b m C, ref: 1 t C -> (prefix, repeat), each b bool: the item's first t tokens are ref; the item is
    ref repeated m / t times."""
    b, m, _ = context.shape
    t = ref.shape[1]
    none = torch.zeros(b, dtype=torch.bool, device=context.device)
    if ref.shape[-1] != context.shape[-1] or t > m:
        return none, none
    ref = ref.to(device=context.device, dtype=context.dtype)
    prefix = _close(context[:, :t], ref, tol)
    repeat = _close(context, ref.repeat(1, m // t, 1), tol) & prefix if m % t == 0 else none
    return prefix, repeat


def match_items(context: torch.Tensor, refs: tuple[torch.Tensor, ...], tol: float = 1e-3) -> list[int | None]:
    """context: b m C, refs: each 1 T C -> per batch item, the index of the ref that the item's context repeats
    (the host repeats a shorter context to batch it) or None."""
    if not refs:
        return [None] * context.shape[0]
    table = torch.stack([context_matches(context, ref, tol)[1] for ref in refs], dim=1).tolist()
    return [row.index(True) if True in row else None for row in table]


def prompt_items(context: torch.Tensor, ref: torch.Tensor, tol: float = 1e-3) -> list[str | None]:
    """context: b m C, ref: 1 t C -> per batch item REPEAT, PREFIX (the prompt then other tokens, e.g. a regional
    prompt's joined context) or None."""
    prefix, repeat = context_matches(context, ref, tol)
    rows = torch.stack([prefix, repeat], dim=1).tolist()
    return [REPEAT if r else PREFIX if p else None for p, r in rows]
