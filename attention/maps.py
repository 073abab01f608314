"""Explicit attention maps, computed in query chunks so memory stays bounded.

Only for effects whose math needs the probabilities (reading maps out, editing them). Everything else keeps
the host's fused kernel. Peak extra memory is b*h*chunk*m floats instead of b*h*n*m.
"""
from __future__ import annotations

from typing import Callable

import torch

# probs: b h c m (a query chunk starting at row ``start``) -> b h c m; may record or edit the chunk
ProbsHook = Callable[[torch.Tensor, int], torch.Tensor]


def default_chunk(n: int, m: int, budget: int = 1 << 24) -> int:
    """Query rows per chunk so a chunk's b*h*c*m map stays near ``budget`` elements per batch-head."""
    return max(1, min(n, budget // max(1, m)))


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                    scale: float | None = None) -> torch.Tensor:
    """q: b h c d, k: b h m d, bias broadcastable to b h c m -> softmax probs b h c m in float32."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhcd,bhmd->bhcm", q.float(), k.float()) * scale
    if bias is not None:
        logits = logits + bias.float()
    return logits.softmax(dim=-1)


def _bias_rows(bias: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    if bias is None or bias.shape[-2] == 1:
        return bias
    return bias[..., start:stop, :]


def attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                      hook: ProbsHook | None = None, chunk: int | None = None,
                      scale: float | None = None) -> torch.Tensor:
    """q: b h n d, k/v: b h m d -> b h n d, softmax(q k^T * scale + bias) v one query chunk at a time."""
    n, m = q.shape[2], k.shape[2]
    chunk = chunk or default_chunk(n, m)
    out = torch.empty_like(q, dtype=v.dtype) if q.shape[-1] == v.shape[-1] else None
    pieces = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        probs = attention_probs(q[:, :, start:stop], k, _bias_rows(bias, start, stop), scale)
        if hook is not None:
            probs = hook(probs, start)
        piece = torch.einsum("bhcm,bhmd->bhcd", probs, v.float()).to(v.dtype)
        if out is not None:
            out[:, :, start:stop] = piece
        else:
            pieces.append(piece)
    return out if out is not None else torch.cat(pieces, dim=2)


def key_attention_mass(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                       chunk: int | None = None) -> torch.Tensor:
    """q: b h n d, k: b h m d -> b m: attention each key receives, summed over queries, mean over heads (float32);
    computed one query chunk at a time."""
    n, m = q.shape[2], k.shape[2]
    chunk = chunk or default_chunk(n, m)
    mass = torch.zeros(q.shape[0], m, device=q.device, dtype=torch.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        mass += attention_probs(q[:, :, start:stop], k, _bias_rows(bias, start, stop)).mean(dim=1).sum(dim=1)
    return mass
