"""What an effect knows about one attention call: the site (family, kind, block, heads, token layout, progress)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .address import BlockAddress

# Attention kinds. "joint" is text+image attention in one call (SD3, Flux, HunyuanVideo, Qwen-Image).
SELF, CROSS, TEMPORAL, JOINT = "self", "cross", "temporal", "joint"
KINDS = (SELF, CROSS, TEMPORAL, JOINT)

# Batch chunk labels, as the host's ``cond_or_uncond`` list writes them (0 cond, 1 uncond, 2+ extra conds).
COND, UNCOND = 0, 1


@dataclass(frozen=True)
class Span:
    """A half-open token range [start, stop) inside a sequence."""

    start: int
    stop: int

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def as_slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class TokenLayout:
    """Token layout of one call: image grid (frames, height, width), where image and text tokens sit in q and k.

    ``img_q``/``img_k``: image tokens in the query/key sequence; ``txt_k``: text tokens in the keys (joint or
    cross attention), ``txt_q``: text tokens in the queries (joint only). ``pixel_area``: the sample's size in
    pixels (latent height x width x VAE scale squared), for resolution-aware effects.
    """

    n_q: int
    n_k: int
    grid: tuple[int, int, int] | None = None
    img_q: Span | None = None
    img_k: Span | None = None
    txt_q: Span | None = None
    txt_k: Span | None = None
    pixel_area: int | None = None


@dataclass(frozen=True)
class Site:
    """One attention call as effects see it."""

    family: str
    kind: str
    block: BlockAddress | None
    heads: int
    head_dim: int
    layout: TokenLayout
    sigma: float
    percent: float | None = None
    chunks: tuple[int, ...] = (COND,)
    extras: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def batch_per_chunk(self) -> int:
        return self.extras.get("batch_per_chunk", 1)

    def describe(self) -> str:
        where = str(self.block) if self.block is not None else "(no block)"
        return f"{where} {self.kind} heads={self.heads}x{self.head_dim} q={self.layout.n_q} k={self.layout.n_k}"


def image_rows(site: Site, keys: bool = False) -> slice:
    """The image tokens of the site's queries (or keys) as a slice; all tokens when the layout has no image span."""
    span = site.layout.img_k if keys else site.layout.img_q
    return span.as_slice() if span is not None else slice(None)
