"""Regional prompting math: region masks on a site's token grid, and the logit biases and modulations they make.

Legend: R regions, N image tokens (f*h*w), T text keys, c query rows of a chunk, b batch, h heads.
Text tokens carry labels: -2 not ours (another prompt, untouched), -1 the base prompt, r >= 0 region r's prompt.

- Hard masks, text rows of joint attention and region isolation follow "Training-free Regional Prompting for
  Diffusion Transformers" (Chen et al. 2024).
- Soft modulation follows DenseDiffusion (Kim et al. 2023, "Dense Text-to-Image Generation with Attention
  Modulation"): scores raised towards the row maximum where a pair should attend, lowered towards the minimum where
  it should not, by a weight that decays over the schedule and shrinks with the region's area.
- Paint-with-words follows eDiff-I (Balaji et al. 2022): a bias w * log(1 + sigma) * max(QK^T) on a region's
  tokens inside the region.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NOT_OURS, BASE = -2, -1


def fit_frames(masks: torch.Tensor, frames: int, temporal: int) -> torch.Tensor:
    """masks: R F H W -> R f H W for ``frames`` latent frames. F is 1 (every frame), ``frames``, or the pixel
    frame count (frames - 1) * temporal + 1, whose frames are averaged per latent frame."""
    count = masks.shape[1]
    if count in (1, frames):
        return masks.expand(-1, frames, -1, -1) if count == 1 else masks
    if count == (frames - 1) * temporal + 1:
        first, rest = masks[:, :1], masks[:, 1:]
        rest = rest.reshape(masks.shape[0], frames - 1, temporal, *masks.shape[2:]).mean(dim=2)
        return torch.cat([first, rest], dim=1)
    raise ValueError(f"a batch of {count} masks does not fit {frames} latent frames")


def grid_masks(masks: torch.Tensor, grid: tuple[int, int, int], temporal: int = 1) -> torch.Tensor:
    """masks: R F H W in [0, 1] (any resolution) -> R N on the token grid (f, h, w), N = f*h*w: the share of each
    token's cell the mask covers (adaptive average pooling, so any size and aspect ratio maps)."""
    f, h, w = grid
    fitted = fit_frames(masks.float(), f, temporal)
    r = fitted.shape[0]
    pooled = F.adaptive_avg_pool2d(fitted.reshape(r * f, *fitted.shape[2:]), (h, w))
    return pooled.clamp_(0.0, 1.0).reshape(r, f * h * w)


def text_labels(base: int, regions: tuple[int, ...]) -> torch.Tensor:
    """Token labels of one joined context: ``base`` tokens of the base prompt, then each region's -> (T,) long."""
    parts = [torch.full((base,), BASE, dtype=torch.long)]
    parts += [torch.full((n,), r, dtype=torch.long) for r, n in enumerate(regions)]
    return torch.cat(parts)


def repeat_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    """(T,) labels -> (n,) for a context the host repeated to n tokens; all NOT_OURS if n is not a multiple."""
    if n % labels.shape[0]:
        return torch.full((n,), NOT_OURS, dtype=torch.long, device=labels.device)
    return labels.repeat(n // labels.shape[0])


def gather_labels(values: torch.Tensor, labels: torch.Tensor, base: float, other: float) -> torch.Tensor:
    """values: R x, labels: b T -> b T x: values[label] for region labels, ``base`` for the base prompt's tokens,
    ``other`` for foreign ones."""
    r, x = values.shape
    rows = torch.cat([values, values.new_full((1, x), base), values.new_full((1, x), other)])
    index = torch.where(labels == BASE, r, torch.where(labels == NOT_OURS, r + 1, labels))
    return rows[index]


def hard_text_bias(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """weights: R c (mask x strength at the query rows), labels: b T -> b 1 c T: log(weight) on a region's tokens
    (-inf outside the region), 0 on the base prompt's and on foreign tokens."""
    return gather_labels(weights, labels, 1.0, 1.0).transpose(-1, -2).log().unsqueeze(1)


def paint_text_bias(weights: torch.Tensor, labels: torch.Tensor, peak: torch.Tensor, w: float,
                    sigma: float) -> torch.Tensor:
    """weights: R c, labels: b T, peak: b h (max of the scaled scores) -> b h c T: eDiff-I's
    w * log(1 + sigma) * max(QK^T) * weight on a region's tokens, 0 elsewhere."""
    gain = (w * math.log1p(sigma)) * peak.float()
    return gain[:, :, None, None] * gather_labels(weights, labels, 0.0, 0.0).transpose(-1, -2).unsqueeze(1)


def same_region(mq: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
    """mq: R c, mk: R N -> c N: how much query i and key j share a region, the background counting as one
    (sum_r m_r(i) m_r(j) + (1 - sum_r m_r(i)) (1 - sum_r m_r(j)), clamped to [0, 1])."""
    out_q = (1 - mq.sum(0)).clamp(0, 1)
    out_k = (1 - mk.sum(0)).clamp(0, 1)
    return (mq.t() @ mk + out_q[:, None] * out_k[None, :]).clamp_(0, 1)


def conflict(mq: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
    """mq: R c, mk: R N -> c N: how much query i and key j lie in different regions: t(i) t(j) - sum_r m_r(i) m_r(j)
    clamped to [0, 1], t = min(1, sum_r m_r); the background conflicts with none, overlaps with both sides."""
    tq, tk = mq.sum(0).clamp(max=1), mk.sum(0).clamp(max=1)
    return (tq[:, None] * tk[None, :] - mq.t() @ mk).clamp_(0, 1)


def isolation_bias(mq: torch.Tensor, mk: torch.Tensor, strength: float) -> torch.Tensor:
    """mq: R c, mk: R N -> 1 1 c N: log(1 - strength * conflict); strength 1 cuts regions off from each other."""
    return torch.log1p(-strength * conflict(mq, mk))[None, None]


def text_rows_bias(row_labels: torch.Tensor, key_labels: torch.Tensor, mk: torch.Tensor,
                   img_first: bool) -> torch.Tensor:
    """Text query rows of joint attention: row_labels b c, key_labels b T, mk: R N -> b 1 c (N + T) (keys in
    sequence order): a region's text sees its own text and its region's image tokens; the base prompt's text
    sees its own text and every image token; foreign rows and keys are untouched."""
    ours = (row_labels != NOT_OURS)[:, :, None] & (key_labels != NOT_OURS)[:, None, :]
    txt = torch.where(ours & (row_labels[:, :, None] != key_labels[:, None, :]), -math.inf, 0.0)
    img = gather_labels(mk, row_labels, 1.0, 1.0).log()
    parts = (img, txt) if img_first else (txt, img)
    return torch.cat(parts, dim=-1).unsqueeze(1)


def dense_decay(progress: float | None) -> float:
    """DenseDiffusion's time decay, (1 - progress)^5: full strength at the first step, near zero by the middle."""
    return (1.0 - (progress or 0.0)) ** 5


def dense_modulate(logits: torch.Tensor, target: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """logits: b h c m; target (should attend, [0, 1]) and gain (0 where a pair is left alone), broadcastable to
    b h c m -> logits + gain * (target (max - s) - (1 - target) (s - min)), row max/min over finite scores
    (DenseDiffusion)."""
    finite = torch.isfinite(logits)
    top = logits.masked_fill(~finite, -math.inf).amax(dim=-1, keepdim=True)
    low = logits.masked_fill(~finite, math.inf).amin(dim=-1, keepdim=True)
    change = target * (top - logits) - (1 - target) * (logits - low)
    return logits + torch.where(finite, gain * change, 0.0)

