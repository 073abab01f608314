"""Cross-frame token merging for video, after VidToMe (Li et al. 2024, "VidToMe: Video Token Merging for Zero-Shot
Video Editing").

Frames are grouped into windows of ``window`` neighbouring frames. In each window one frame, drawn at random
(seeded per site and step), is the destination; every token of the window's other frames is a source, matched
(cosine on the queries, all heads) to its most similar destination token. The ``ratio`` share of each
window's sources that match best merge into their destination (a mean); the others stay. Attention then runs on
the window's merged tokens jointly, and every token gets its own output back (merged ones their destination's).
Tokens that look alike across frames thus share one key and one output: fewer tokens to attend, and the frames
of a window are held to one appearance, which steadies the video.

Two layouts of frames:
- ``tokens``: video DiTs (WAN, HunyuanVideo, LTXV) attend all frames in one sequence (f h w image tokens), so the
  call keeps its shape and simply gets fewer image tokens; text tokens of joint attention are never merged.
- ``batch``: UNet video (AnimateDiff-style motion modules) puts a chunk's frames in the batch and attends each frame
  alone; here each window's frames become one sequence, attended jointly (VidToMe's cross-frame self-attention),
  then split back into frames. The frame count and order are kept.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .effect import AttnCall, Backend
from .merge import (GridEffect, MergePlan, check_levels, image_grid, match_sources, merge_call, plan_seed,
                    query_metric, unmerge_rows)
from .schedule import Schedule
from .site import Site, Span

TOKENS, BATCH = "tokens", "batch"
FRAME_AXES = (TOKENS, BATCH)


def windows(frames: int, window: int) -> list[tuple[int, int]]:
    """-> (first frame, end frame) per window of ``window`` frames; the last may be shorter."""
    return [(start, min(frames, start + window)) for start in range(0, frames, window)]


def window_tokens(start: int, stop: int, picks: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """picks: B destination frames in [start, stop) -> dst B t, src B ((stop - start - 1) t) token indices."""
    tokens = torch.arange(t)
    frames = torch.arange(start, stop).expand(len(picks), -1)
    others = frames[frames != picks[:, None]].view(len(picks), -1)
    return picks[:, None] * t + tokens, (others[:, :, None] * t + tokens).flatten(1)


def video_plan(metric: torch.Tensor, frames: int, window: int, ratio: float,
               generator: torch.Generator) -> MergePlan:
    """metric: B (f t) c -> plan merging ratio of each window's non-destination-frame tokens (Li et al. 2024)."""
    # Each row draws its own destination frame per window; r is the same for every row, so rows stay aligned.
    b, n = metric.shape[:2]
    t = n // frames
    m = F.normalize(metric.float(), dim=-1)
    parts, offset = [], 0
    for start, stop in windows(frames, window):
        picks = torch.randint(start, stop, (b,), generator=generator)
        dst, src = (x.to(metric.device) for x in window_tokens(start, stop, picks, t))
        kept, merged, into = match_sources(m, src, dst, int(ratio * src.shape[1]))
        parts.append((kept, merged, dst, into + offset))
        offset += t
    kept, merged, dst, into = (torch.cat([p[i] for p in parts], 1) for i in range(4))
    return MergePlan(kept, merged, dst, into, 1)


def window_groups(frames: int, window: int) -> list[tuple[int, int, int]]:
    """-> (first frame, frames per window, windows) for the full windows and the shorter last one, if any."""
    full, rest = divmod(frames, window)
    groups = [(0, window, full)] if full else []
    return groups + ([(full * window, rest, 1)] if rest else [])


def frames_to_windows(x: torch.Tensor, frames: int, first: int, size: int, count: int) -> torch.Tensor:
    """x: (c f) h n d -> (c w) h (s n) d: ``count`` windows of ``size`` frames from ``first``, each one sequence."""
    b, h, n, d = x.shape
    x = x.view(b // frames, frames, h, n, d)[:, first:first + size * count]
    x = x.reshape(-1, count, size, h, n, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, size * n, d)


def window_bias(bias: torch.Tensor | None, size: int, n: int) -> torch.Tensor | None:
    """A bias shared by all frames, 1 h? n? n -> 1 h? (s n)? (s n): tiled over the frames of a window's sequence."""
    if bias is None:
        return None
    rows = size if bias.shape[-2] == n else 1
    return bias.repeat(*([1] * (bias.ndim - 2)), rows, size if bias.shape[-1] == n else 1)


class VideoMerge(GridEffect):
    """VidToMe (Li et al. 2024): tokens merged across the frames of each window, attended jointly, unmerged."""

    node_id = "AttnLabVideoMerge"

    def __init__(self, schedule: Schedule, ratio: float, window: int = 2, frame_axis: str = TOKENS, seed: int = 0,
                 proportional: bool = False, max_downsample: int = 1, token_pixels: float = 8):
        super().__init__(schedule)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), not {ratio}")
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, not {window}")
        if frame_axis not in FRAME_AXES:
            raise ValueError(f"frame_axis must be one of {', '.join(FRAME_AXES)}, not '{frame_axis}'")
        check_levels(max_downsample, token_pixels)
        self.ratio, self.window, self.frame_axis, self.seed = float(ratio), int(window), frame_axis, int(seed)
        self.proportional, self.max_downsample = bool(proportional), int(max_downsample)
        self.token_pixels = token_pixels

    @property
    def neutral(self) -> bool:
        return self.ratio == 0.0 or self.window == 1

    def supports(self, site: Site) -> bool:
        if not super().supports(site):
            return False
        frames = image_grid(site)[0]
        return frames > 1 if self.frame_axis == TOKENS else frames == 1 and site.batch_per_chunk > 1

    def _generator(self, site: Site) -> torch.Generator:
        return torch.Generator().manual_seed(plan_seed(self.seed, site))

    def merged(self, call: AttnCall, span: Span, frames: int, generator: torch.Generator, inner: Backend):
        """One call whose image tokens at ``span`` hold ``frames`` frames: merge across windows, attend, unmerge."""
        metric = query_metric(call.q, span)
        plan = video_plan(metric, frames, self.window, self.ratio, generator)
        if plan.r == 0:
            return inner(call)
        return unmerge_rows(plan, inner(merge_call(plan, call, span, self.proportional)), span.start)

    def _changed(self, site: Site, inner: Backend) -> Callable[[AttnCall], torch.Tensor]:
        generator = self._generator(site)
        if self.frame_axis == TOKENS:
            return lambda call: self.merged(call, site.layout.img_q, image_grid(site)[0], generator, inner)
        return lambda call: self._batch_frames(call, site.batch_per_chunk, generator, inner)

    def _batch_frames(self, call: AttnCall, frames: int, generator: torch.Generator, inner: Backend) -> torch.Tensor:
        """Frames in the batch (c f) h n d: each window's frames as one sequence, merged and attended jointly."""
        if (call.bias is not None and call.bias.shape[0] > 1) or call.q.shape[0] % frames:
            return inner(call)  # a per-item bias (another effect's) cannot follow frames into a joint sequence
        b, _, n, _ = call.q.shape
        pieces = []
        for first, size, count in window_groups(frames, self.window):
            sub = AttnCall(*(frames_to_windows(x, frames, first, size, count) for x in (call.q, call.k, call.v)),
                           window_bias(call.bias, size, n))
            out = self.merged(sub, Span(0, size * n), size, generator, inner) if size > 1 else inner(sub)
            pieces.append(out.reshape(b // frames, count * size, n, out.shape[-1]))
        return torch.cat(pieces, 1).reshape(b, n, -1)

    def settings(self) -> str:
        extra = " proportional" if self.proportional else ""
        return f"ratio={self.ratio:g} window={self.window} frames_in={self.frame_axis} seed={self.seed}{extra}"


def tokens_after(frames: int, tokens: int, window: int, ratio: float) -> int:
    """Image tokens a call keeps after merging f frames of t tokens in windows (for docs and benchmarks)."""
    kept = 0
    for start in range(0, frames, window):
        size = min(window, frames - start)
        kept += size * tokens - int(ratio * (size - 1) * tokens)
    return kept

