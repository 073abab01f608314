"""The one schedule convention every effect takes: a sigma window, a block selector, attention kinds, cond/uncond.

The sigma window comes from ComfyUI's ``start_percent``/``end_percent`` through the model's own
``percent_to_sigma`` (done by the node), so 0.0-0.5 means what it means in core nodes: active while
``sigma_end <= sigma <= sigma_start``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .address import BlockSelector
from .site import COND, KINDS, UNCOND, Site

APPLY_TO = {"both": None, "cond": frozenset({COND}), "uncond": frozenset({UNCOND})}


@dataclass(frozen=True)
class Schedule:
    """Where and when an effect applies."""

    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    blocks: BlockSelector = BlockSelector.parse("")
    kinds: frozenset[str] | None = None  # None: every kind the effect supports
    apply_to: str = "both"
    percents: tuple[float, float] = (0.0, 1.0)  # the start/end percent the sigmas came from, for display

    def __post_init__(self):
        if self.apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be one of {', '.join(APPLY_TO)}, not '{self.apply_to}'")
        if self.kinds is not None and not self.kinds <= set(KINDS):
            raise ValueError(f"unknown attention kind in {sorted(self.kinds)}; known: {', '.join(KINDS)}")

    def active_at(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def chunk_selected(self, chunk: int) -> bool:
        """Whether a batch chunk labelled ``chunk`` (0 cond, 1 uncond, 2+ extra conds) is selected."""
        wanted = APPLY_TO[self.apply_to]
        if wanted is None:
            return True
        return (UNCOND if chunk == UNCOND else COND) in wanted

    def items(self, site: Site) -> tuple[bool, ...] | None:
        """Per batch item selection for ``site``, or None when every item is selected."""
        picked = [self.chunk_selected(c) for c in site.chunks]
        if all(picked):
            return None
        return tuple(p for p in picked for _ in range(site.batch_per_chunk))

    def matches(self, site: Site) -> bool:
        return (self.active_at(site.sigma)
                and self.blocks.matches(site.block)
                and (self.kinds is None or site.kind in self.kinds)
                and any(self.chunk_selected(c) for c in site.chunks))

    def describe(self) -> str:
        kinds = "all kinds" if self.kinds is None else "/".join(sorted(self.kinds))
        window = f"steps {self.percents[0]:g}-{self.percents[1]:g} (sigma {self.sigma_end:.4g}..{min(self.sigma_start, 1e4):.4g})"
        return f"blocks={self.blocks} {kinds} {window} apply_to={self.apply_to}"
