"""Conversions between the host's attention layouts and the canonical b h n d layout effects work in."""
from __future__ import annotations

import torch


def to_bhnd(x: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    """b n (h d) (b n h d when 4-D, as SD3's values; b h n d when ``skip_reshape``) -> b h n d, as a view."""
    if skip_reshape:
        return x
    if x.ndim == 4:
        return x.transpose(1, 2)
    b, n, hd = x.shape
    return x.view(b, n, heads, hd // heads).transpose(1, 2)


def bhnd_to_bnhd(x: torch.Tensor) -> torch.Tensor:
    """b h n d -> b n (h d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A host attention mask ((n m), (b n m) or (b h n m); bool = keep, float = additive) -> additive b? h? n m."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    while mask.ndim < 4:
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    return mask.to(dtype)


def full_rows(bias: torch.Tensor | None, n_q: int) -> torch.Tensor | None:
    """Expand a bias whose query axis is broadcast (size 1) to ``n_q`` rows; some host backends need it."""
    if bias is None or bias.shape[-2] == n_q:
        return bias
    return bias.expand(*bias.shape[:-2], n_q, bias.shape[-1])
