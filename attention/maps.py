"""Explicit attention maps, computed in query chunks so memory stays bounded.

Only for effects whose math needs the probabilities (reading maps out, editing them). Everything else keeps
the host's fused kernel. Peak extra memory is b*h*chunk*m floats instead of b*h*n*m.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .effect import AttnCall, Backend
from .layout import bhnd_to_bnhd
from .site import Span

# probs: b h c m (a query chunk starting at row ``start``) -> b h c m; may record or edit the chunk
ProbsHook = Callable[[torch.Tensor, int], torch.Tensor]


def default_chunk(n: int, m: int, budget: int = 1 << 24) -> int:
    """Query rows per chunk so a chunk's b*h*c*m map stays near ``budget`` elements per batch-head."""
    return max(1, min(n, budget // max(1, m)))


def attention_logits(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """q: b h c d, k: b h m d, bias broadcastable to b h c m -> logits q k^T * scale + bias, b h c m float32."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhcd,bhmd->bhcm", q.float(), k.float()) * scale
    if bias is not None:
        logits = logits + bias.float()
    return logits


def attention_probs(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                    scale: float | None = None) -> torch.Tensor:
    """q: b h c d, k: b h m d, bias broadcastable to b h c m -> softmax probs b h c m in float32."""
    return attention_logits(q, k, bias, scale).softmax(dim=-1)


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


# -- query-row chunks -----------------------------------------------------------------------------------------------
# Rows [start, stop) of a call (q and bias already sliced to them) -> b c (h d)
RowRunner = Callable[[AttnCall, int, int], torch.Tensor]


def add_bias(bias: torch.Tensor | None, extra: torch.Tensor | None) -> torch.Tensor | None:
    """Sum of two additive logit biases, either of which may be None (broadcast to a common shape)."""
    if extra is None:
        return bias
    return extra if bias is None else bias + extra.to(bias.dtype)


def call_rows(call: AttnCall, start: int, stop: int) -> AttnCall:
    """The call restricted to query rows [start, stop): q b h c d, bias rows sliced where it has them."""
    return call.with_(q=call.q[:, :, start:stop], bias=_bias_rows(call.bias, start, stop))


def call_items(call: AttnCall, items: list[int]) -> AttnCall:
    """The call restricted to batch items ``items`` (a bias with one batch row is shared)."""
    bias = call.bias
    if bias is not None and bias.shape[0] > 1:
        bias = bias[items]
    return call.with_(q=call.q[items], k=call.k[items], v=call.v[items], bias=bias)


def split_items(call: AttnCall, selected, changed: Callable[[AttnCall, list], torch.Tensor],
                inner: Backend) -> torch.Tensor:
    """-> b n (h d): ``changed(sub-call, indices)`` on the selected batch items, ``inner`` on the rest (two calls)."""
    picked = [i for i, s in enumerate(selected) if s]
    rest = [i for i, s in enumerate(selected) if not s]
    if not rest:
        return changed(call, picked)
    if not picked:
        return inner(call)
    a, b = changed(call_items(call, picked), picked), inner(call_items(call, rest))
    out = a.new_empty(len(selected), *a.shape[1:])
    out[picked], out[rest] = a, b
    return out


def _cover(n: int, spans: Sequence[tuple[Span, RowRunner]]) -> list[tuple[int, int, RowRunner | None]]:
    """Ordered pieces covering rows [0, n): the spans' rows with their runner, the gaps with None."""
    pieces, at = [], 0
    for span, runner in sorted(spans, key=lambda s: s[0].start):
        if span.start > at:
            pieces.append((at, span.start, None))
        if len(span):
            pieces.append((span.start, span.stop, runner))
        at = max(at, span.stop)
    if at < n:
        pieces.append((at, n, None))
    return pieces


def run_rows(call: AttnCall, spans: Sequence[tuple[Span, RowRunner]], inner: Backend, chunk: int) -> torch.Tensor:
    """Attention of ``call`` with each span's rows run by its runner ``chunk`` rows at a time and the other rows
    by ``inner`` in one call; outputs b n (h d) in row order. Bounds the memory of row-wise biases and maps."""
    outs = []
    for start, stop, runner in _cover(call.q.shape[2], spans):
        if runner is None:
            outs.append(inner(call_rows(call, start, stop)))
            continue
        for a in range(start, stop, chunk):
            z = min(stop, a + chunk)
            outs.append(runner(call_rows(call, a, z), a, z))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def explicit_attention(call: AttnCall, logits_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """softmax(logits_fn(q k^T * scale + bias)) v for a call of a few rows: b h c d inputs -> b c (h d)."""
    logits = logits_fn(attention_logits(call.q, call.k, call.bias))
    out = torch.einsum("bhcm,bhmd->bhcd", logits.softmax(dim=-1), call.v.float()).to(call.v.dtype)
    return bhnd_to_bnhd(out)
