"""Fewer image tokens in self- and joint attention, for speed: token merging (ToMe) and token downsampling (ToDo).

ToMe follows Bolya & Hoffman 2023, "Token Merging for Fast Stable Diffusion" (tomesd): bipartite soft matching on
the image-token grid. Each stride cell of each frame gets one random destination token; every other token is a
source; the ``r`` sources most similar (cosine, on the queries with all their heads) to their best destination merge
into it (a mean). Queries, keys and values are merged with one plan, the host's kernel attends the smaller call,
and every merged source gets its destination's output back (as tomesd's unmerge). ``proportional`` adds log(size)
to each merged key's logits: the proportional attention of Bolya et al. 2023, "Token Merging: Your ViT But
Faster", which makes attention to a merged group of identical tokens equal to attention to the group.

ToDo follows Smith et al. 2024, "ToDo: Token Downsampling for Efficient Generation of High-Resolution Images":
every query stays; image keys and values are average-pooled by ``factor`` on each frame's token grid. Grids not
divisible by the factor are pooled with ceil_mode (count_include_pad=False): the border cells average only the
tokens they hold, so any grid works and no token is dropped; a site keeps f*ceil(h/k)*ceil(w/k) image keys.

Both apply to image tokens only: the text tokens of joint attention pass untouched, in place. An additive bias
(a mask, or another effect's bias) follows the tokens: a merged or pooled key or query row takes the max of its
members' biases, so a key stays visible where any of its members was. Both hand a smaller call to the host's
fused kernel; neither builds attention maps. Both work in ``attend`` rather than ``pre``: a CFG half left out by
``apply_to`` then runs as its own unchanged call (key counts differ), and biases that other effects add in ``pre``
are reduced with the tokens they were built for. They are ``innermost``: wherever they sit in the stack, they nest
nearest the kernel, so effects whose ``attend`` reads tokens by position always see the full call.

Which sites: ``max_downsample`` compares a site's grid with the model's finest attention grid, read from the
sample's pixel area (latent h*w*vae_scale^2, ``TokenLayout.pixel_area``) and ``token_pixels``, the side in pixels
of one token at the model's finest attention level (VAE scale x patch size x that level's downsampling: 8 for
SD1.5/SD2, 16 for SDXL, whose first attention level is already downsampled twice, and for Flux/SD3/WAN). The
side ratio is rounded to a power of two, so 1 is the finest attention level only, 2 also the next one, and so on.
(tomesd counts from the latent instead, so its 1 reaches nothing on SDXL.) DiTs have one level.

Determinism: the destinations come from a CPU torch.Generator seeded with the user's seed and the site (block,
kind, grid, sigma): a fresh pattern per site and step, as tomesd draws one per call, and the same on every run. The
merge's scatter is bit-identical on CPU; on CUDA its float additions are atomic (as in tomesd), so a token merged
from three or more can differ in its last bit from run to run.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .effect import AttnCall, Backend, Effect
from .maps import add_bias, split_items
from .schedule import Schedule
from .site import JOINT, SELF, Site, Span

Grid = tuple[int, int, int]  # frames, height, width of the image-token grid
MATCH_BUDGET = 1 << 24  # similarity entries per chunk of sources when matching


# -- where the effects apply ------------------------------------------------------------------------------------------
def image_grid(site: Site) -> Grid | None:
    """The site's image grid (f, h, w) when its image queries and keys are exactly its tokens, else None."""
    layout = site.layout
    if layout.grid is None or layout.img_q is None or layout.img_q != layout.img_k:
        return None
    return layout.grid if len(layout.img_q) == math.prod(layout.grid) else None


def grid_downsample(site: Site, token_pixels: float) -> int:
    """Site grid vs the model's finest attention grid, side ratio rounded to 1, 2, 4, ...; 1 if unknown."""
    layout = site.layout
    if layout.grid is None or not layout.pixel_area:
        return 1
    side = math.sqrt(layout.pixel_area / (layout.grid[1] * layout.grid[2])) / token_pixels
    return 2 ** max(0, round(math.log2(side)))


def plan_seed(seed: int, site: Site) -> int:
    """63-bit generator seed from ``seed`` and the site (block, kind, grid, sigma): fixed per run, new per site."""
    text = f"{seed}|{site.block}|{site.kind}|{site.layout.grid}|{site.sigma!r}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


# -- token merging: the plan -------------------------------------------------------------------------------------------
def query_metric(q: torch.Tensor, span: Span) -> torch.Tensor:
    """q: b h n d -> b n (h d): the image queries at ``span`` with every head's dimensions, for matching."""
    # Merged queries share one output, so their spread is the merge's error (proportional attention makes merging
    # keys and values nearly exact): matching on the full queries beats keys averaged over heads (ToMe ViT's
    # metric) by about a tenth in output deviation at the cost of a wider similarity product, the width tomesd's
    # hidden-state metric has too (bench/merge_cost.py).
    return q[:, :, span.as_slice()].transpose(1, 2).flatten(2)


def destinations(grid: Grid, stride: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """-> f c: a random token (raster h w) per stride cell, c = ceil(h/sy)*ceil(w/sx) (Bolya & Hoffman 2023)."""
    # Border cells the grid cuts short get one destination too; a stride larger than the grid is clamped to it.
    f, h, w = grid
    sy, sx = min(stride[0], h), min(stride[1], w)
    top, left = torch.arange(0, h, sy), torch.arange(0, w, sx)
    cell_h, cell_w = (h - top).clamp(max=sy), (w - left).clamp(max=sx)
    u = torch.rand(f, len(top), len(left), 2, generator=generator, dtype=torch.float64)
    rows = top[:, None] + (u[..., 0] * cell_h[:, None]).floor().long()
    cols = left[None, :] + (u[..., 1] * cell_w[None, :]).floor().long()
    return (rows * w + cols).reshape(f, -1)


def sources(dst: torch.Tensor, tokens: int) -> torch.Tensor:
    """dst: f c -> f (t - c): the other token indices of each frame, the sources (Bolya & Hoffman 2023)."""
    keep = torch.ones(dst.shape[0], tokens, dtype=torch.bool).scatter_(1, dst, False)
    return torch.arange(tokens).expand_as(keep)[keep].view(dst.shape[0], -1)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: B t c, index: B k -> B k c (rows of x picked per batch item; tomesd)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def best_match(a: torch.Tensor, d: torch.Tensor, budget: int = MATCH_BUDGET) -> tuple[torch.Tensor, torch.Tensor]:
    """a: B s c, d: B t c unit rows -> best similarity B s, its destination B s (Bolya & Hoffman 2023)."""
    # In chunks of sources, so the B s t similarity never exists whole.
    rows = max(1, budget // max(1, a.shape[0] * d.shape[1]))
    parts = [torch.bmm(a[:, i:i + rows], d.transpose(1, 2)).max(dim=-1) for i in range(0, a.shape[1], rows)]
    return torch.cat([p.values for p in parts], 1), torch.cat([p.indices for p in parts], 1)


@dataclass(frozen=True)
class MergePlan:
    """Index tensors of one bipartite merge over (b f) frames of t tokens (Bolya & Hoffman 2023)."""

    # Token indices within a frame: ``unm`` B u sources kept, ``src`` B r sources merged, ``dst`` B c destinations,
    # ``into`` B r the destination slot (0..c-1) of each merged source; B = b*f. Merged tokens are laid out
    # [kept sources, destinations] per frame.

    unm: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    into: torch.Tensor
    frames: int

    @property
    def r(self) -> int:
        """Tokens merged away per frame."""
        return self.src.shape[1]

    @property
    def tokens(self) -> int:
        """Image tokens per frame before merging (t)."""
        return self.unm.shape[1] + self.src.shape[1] + self.dst.shape[1]

    @property
    def batch(self) -> int:
        """The batch b of the tensors the plan merges."""
        return self.dst.shape[0] // self.frames

    @property
    def merged_tokens(self) -> int:
        """Image tokens after merging: f (t - r)."""
        return self.frames * (self.tokens - self.r)

    def merge(self, x: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
        """x: b (f t) c -> b (f (t - r)) c, sources reduced into destinations (mean; amax for biases) (tomesd)."""
        if self.r == 0:
            return x
        c = x.shape[-1]
        x = x.reshape(self.dst.shape[0], self.tokens, c)
        into = self.into.unsqueeze(-1).expand(-1, -1, c)
        dst = gather_rows(x, self.dst).scatter_reduce(1, into, gather_rows(x, self.src), reduce, include_self=True)
        return torch.cat([gather_rows(x, self.unm), dst], dim=1).view(self.batch, -1, c)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """y: b (f (t - r)) c -> b (f t) c, merged sources copying their destination's row (tomesd's unmerge)."""
        if self.r == 0:
            return y
        c, u = y.shape[-1], self.unm.shape[1]
        y = y.reshape(self.dst.shape[0], -1, c)
        dst = y[:, u:]
        out = y.new_empty(self.dst.shape[0], self.tokens, c)
        for index, rows in ((self.dst, dst), (self.unm, y[:, :u]), (self.src, gather_rows(dst, self.into))):
            out.scatter_(1, index.unsqueeze(-1).expand(-1, -1, c), rows)
        return out.view(self.batch, -1, c)

    def sizes(self) -> torch.Tensor:
        """-> b (f (t - r)) float32: how many original tokens each merged token stands for."""
        count = torch.ones(self.dst.shape[0], self.tokens - self.r, device=self.dst.device)
        count[:, self.unm.shape[1]:].scatter_add_(1, self.into, torch.ones(self.into.shape, device=count.device))
        return count.view(self.batch, -1)


def bipartite_plan(metric: torch.Tensor, grid: Grid, stride: tuple[int, int], ratio: float,
                   generator: torch.Generator) -> MergePlan:
    """metric: b (f h w) c -> plan merging r = floor(ratio h w) sources per frame (Bolya & Hoffman 2023)."""
    # Frames are folded into the batch; r is capped at the number of sources.
    f, h, w = grid
    b, t = metric.shape[0], h * w
    dst = destinations(grid, stride, generator)
    src = sources(dst, t)
    dst, src = dst.to(metric.device).repeat(b, 1), src.to(metric.device).repeat(b, 1)
    r = min(int(ratio * t), src.shape[1])
    if r == 0:
        return MergePlan(src, src[:, :0], dst, src[:, :0], f)
    kept, merged, into = match_sources(F.normalize(metric.float().reshape(b * f, t, -1), dim=-1), src, dst, r)
    return MergePlan(kept, merged, dst, into, f)


def match_sources(m: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, r: int):
    """m: B t c unit rows, src: B s, dst: B c -> kept B (s-r), merged B r, into B r (Bolya & Hoffman 2023)."""
    # The r sources most similar to their best destination merge into it; ``into`` indexes ``dst``.
    if r == 0:
        return src, src[:, :0], src[:, :0]
    score, best = best_match(gather_rows(m, src), gather_rows(m, dst))
    order = score.argsort(dim=-1, descending=True, stable=True)
    merged, kept = order[:, :r], order[:, r:]
    return src.gather(1, kept), src.gather(1, merged), best.gather(1, merged)


# -- token merging: calls ---------------------------------------------------------------------------------------------
def split_span(x: torch.Tensor, axis: int, span: Span) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x -> (before, inside, after) the span along ``axis``, as views."""
    n = x.shape[axis]
    return (x.narrow(axis, 0, span.start), x.narrow(axis, span.start, len(span)),
            x.narrow(axis, span.stop, n - span.stop))


def merge_tokens(plan: MergePlan, x: torch.Tensor, axis: int, span: Span, reduce: str = "mean") -> torch.Tensor:
    """x: b .. (f t at ``span`` of ``axis``) .. -> b .. (f (t - r)) .., other tokens kept (Bolya & Hoffman 2023)."""
    x = x.expand(plan.batch, *x.shape[1:])
    before, img, after = split_span(x, axis, span)
    moved = img.movedim(axis, 1)
    merged = plan.merge(moved.reshape(plan.batch, moved.shape[1], -1), reduce)
    merged = merged.view(plan.batch, -1, *moved.shape[2:]).movedim(1, axis)
    return torch.cat([before, merged, after], dim=axis)


def unmerge_rows(plan: MergePlan, out: torch.Tensor, start: int) -> torch.Tensor:
    """out: b n' c, merged image rows from ``start`` -> b n c, every image row restored (tomesd's unmerge)."""
    stop = start + plan.merged_tokens
    return torch.cat([out[:, :start], plan.unmerge(out[:, start:stop]), out[:, stop:]], dim=1)


def size_bias(plan: MergePlan, n_keys: int, start: int, dtype: torch.dtype) -> torch.Tensor:
    """-> b 1 1 m: log(size) on merged keys, 0 elsewhere (proportional attention, Bolya et al. 2023, ToMe ViT)."""
    bias = torch.zeros(plan.batch, n_keys, device=plan.dst.device)
    bias[:, start:start + plan.merged_tokens] = plan.sizes().log()
    return bias.to(dtype).view(plan.batch, 1, 1, n_keys)


def merge_bias(plan: MergePlan, bias: torch.Tensor | None, span: Span, n_q: int, n_k: int) -> torch.Tensor | None:
    """bias b h n m (broadcastable) -> b h n' m': a merged row or key takes its members' max (visible if any was)."""
    if bias is None:
        return None
    if bias.shape[-2] == n_q > 1:
        bias = merge_tokens(plan, bias, bias.ndim - 2, span, "amax")
    if bias.shape[-1] == n_k > 1:
        bias = merge_tokens(plan, bias, bias.ndim - 1, span, "amax")
    return bias


def merge_call(plan: MergePlan, call: AttnCall, span: Span, proportional: bool = False) -> AttnCall:
    """q, k, v: b h n d -> b h n' d, image tokens at ``span`` merged, optional log-size bias (Bolya & Hoffman 2023)."""
    q, k, v = (merge_tokens(plan, t, 2, span) for t in (call.q, call.k, call.v))
    bias = merge_bias(plan, call.bias, span, call.q.shape[2], call.k.shape[2])
    if proportional:
        bias = add_bias(bias, size_bias(plan, k.shape[2], span.start, q.dtype))
    return AttnCall(q, k, v, bias)


# -- token downsampling ------------------------------------------------------------------------------------------------
def pooled_size(grid: Grid, factor: int) -> int:
    """Image keys left after pooling an f h w grid by k in ceil mode: f ceil(h/k) ceil(w/k) (Smith et al. 2024)."""
    f, h, w = grid
    return f * math.ceil(h / factor) * math.ceil(w / factor)


def pool_grid(x: torch.Tensor, axis: int, span: Span, grid: Grid, factor: int, op: str = "avg") -> torch.Tensor:
    """x: .. (f h w at ``span`` of ``axis``) .. -> .. (f h' w') .., avg- or max-pooled by k (Smith et al. 2024)."""
    # ceil_mode with count_include_pad=False: a border cell averages only the tokens it holds.
    f, h, w = grid
    before, img, after = split_span(x, axis, span)
    moved = img.movedim(axis, -1)
    planes = moved.reshape(-1, f, h, w)
    kernel = (min(factor, h), min(factor, w))
    if op == "avg":
        pooled = F.avg_pool2d(planes, kernel, ceil_mode=True, count_include_pad=False)
    else:
        pooled = F.max_pool2d(planes, kernel, ceil_mode=True)
    pooled = pooled.reshape(*moved.shape[:-1], -1).movedim(-1, axis)
    return torch.cat([before, pooled, after], dim=axis)


def downsample_call(call: AttnCall, span: Span, grid: Grid, factor: int) -> AttnCall:
    """k, v: b h m d -> b h m' d, image keys avg-pooled, bias over keys max-pooled, q kept (Smith et al. 2024)."""
    k, v = (pool_grid(t, 2, span, grid, factor) for t in (call.k, call.v))
    bias = call.bias
    if bias is not None and bias.shape[-1] == call.k.shape[2] > 1:
        bias = pool_grid(bias, bias.ndim - 1, span, grid, factor, "max")
    return call.with_(k=k, v=v, bias=bias)


# -- the effects ----------------------------------------------------------------------------------------------------
def by_items(call: AttnCall, items: Sequence[bool] | None, changed: Backend, inner: Backend) -> torch.Tensor:
    """-> b n (h d): ``changed`` on the selected batch items (None: all), ``inner`` on the others (as two calls)."""
    if items is None:
        return changed(call)
    return split_items(call, items, lambda sub, _: changed(sub), inner)


def check_levels(max_downsample: int, token_pixels: float) -> None:
    if max_downsample < 1:
        raise ValueError(f"max_downsample must be at least 1, not {max_downsample}")
    if token_pixels <= 0:
        raise ValueError(f"token_pixels must be positive, not {token_pixels}")


class GridEffect(Effect):
    """Shared by ToMe and ToDo: self and joint attention, at sites whose grid is known and fine enough."""

    supported_kinds = frozenset({SELF, JOINT})
    innermost = True
    max_downsample: int
    token_pixels: float

    def supports(self, site: Site) -> bool:
        return (super().supports(site) and image_grid(site) is not None
                and grid_downsample(site, self.token_pixels) <= self.max_downsample)

    def attend(self, call: AttnCall, site: Site, inner: Backend) -> torch.Tensor:
        return by_items(call, self.schedule.items(site), self._changed(site, inner), inner)

    def _changed(self, site: Site, inner: Backend) -> Callable[[AttnCall], torch.Tensor]:
        raise NotImplementedError


class TokenMerge(GridEffect):
    """ToMe for SD (Bolya & Hoffman 2023): merge image tokens for the attention call, unmerge its output."""

    node_id = "AttnLabToMe"

    def __init__(self, schedule: Schedule, ratio: float, stride: tuple[int, int] = (2, 2), max_downsample: int = 1,
                 seed: int = 0, proportional: bool = False, token_pixels: float = 8):
        super().__init__(schedule)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), not {ratio}")
        if min(stride) < 1:
            raise ValueError(f"stride must be at least 1x1, not {stride}")
        check_levels(max_downsample, token_pixels)
        self.ratio, self.stride, self.seed = float(ratio), (int(stride[0]), int(stride[1])), int(seed)
        self.max_downsample, self.proportional = int(max_downsample), bool(proportional)
        self.token_pixels = token_pixels

    @property
    def neutral(self) -> bool:
        return self.ratio == 0.0 or self.stride == (1, 1)

    def plan(self, call: AttnCall, site: Site) -> MergePlan:
        """The site's plan from its image queries (b n (h d)), with a per-site seeded generator."""
        metric = query_metric(call.q, site.layout.img_q)
        generator = torch.Generator().manual_seed(plan_seed(self.seed, site))
        return bipartite_plan(metric, image_grid(site), self.stride, self.ratio, generator)

    def check_stride(self, site: Site) -> None:
        """A stride larger than the site's token grid is a user error (it would merge across the whole grid)."""
        _, h, w = image_grid(site)
        for name, stride, side in (("stride_y", self.stride[0], h), ("stride_x", self.stride[1], w)):
            if stride > side:
                raise ValueError(f"{self.node_id}: input '{name}': {stride} is larger than the {h}x{w} token grid at "
                                 f"{site.block}. Fix: use a stride of at most {min(h, w)}, a lower max_downsample, "
                                 "or a larger image.")

    def _changed(self, site: Site, inner: Backend) -> Callable[[AttnCall], torch.Tensor]:
        self.check_stride(site)

        def run(call: AttnCall) -> torch.Tensor:
            plan = self.plan(call, site)
            if plan.r == 0:
                return inner(call)
            span = site.layout.img_q
            return unmerge_rows(plan, inner(merge_call(plan, call, span, self.proportional)), span.start)
        return run

    def settings(self) -> str:
        extra = " proportional" if self.proportional else ""
        return (f"ratio={self.ratio:g} stride={self.stride[1]}x{self.stride[0]} max_downsample={self.max_downsample} "
                f"seed={self.seed}{extra}")


class TokenDownsample(GridEffect):
    """ToDo (Smith et al. 2024): image keys and values average-pooled by ``factor`` on the token grid."""

    node_id = "AttnLabToDo"

    def __init__(self, schedule: Schedule, factor: int, max_downsample: int = 1, token_pixels: float = 8):
        super().__init__(schedule)
        if factor < 1:
            raise ValueError(f"factor must be at least 1, not {factor}")
        check_levels(max_downsample, token_pixels)
        self.factor, self.max_downsample, self.token_pixels = int(factor), int(max_downsample), token_pixels

    @property
    def neutral(self) -> bool:
        return self.factor == 1

    def _changed(self, site: Site, inner: Backend) -> Callable[[AttnCall], torch.Tensor]:
        grid, span = image_grid(site), site.layout.img_k
        return lambda call: inner(downsample_call(call, span, grid, self.factor))

    def settings(self) -> str:
        return f"factor={self.factor} max_downsample={self.max_downsample}"
