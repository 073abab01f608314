"""Attention reuse across steps and between cond and uncond, after DiTFastAttn (Yuan et al. 2024, "DiTFastAttn:
Attention Compression for Diffusion Transformer Models").

DiTFastAttn observes that a site's attention output changes little between neighbouring steps late in sampling,
and little between the conditional and unconditional passes at many sites, and skips recomputing it there. It
picks where from an offline calibration; this effect decides at run time, from the call's own inputs, so it needs
no calibration and adapts to the prompt and sampler:

- across steps: a site keeps the q, k, v (and bias) it last computed attention for (its anchor) and that output.
  While the bias is the same and the relative L1 change of the new q, k, v from the anchor stays below
  ``threshold``, the stored output is returned instead of attending again. The change is measured against the
  anchor, not the previous step, so drift adds up and forces a recompute.
- across cond/uncond: when the uncond items' q, k, v differ from the cond items' by less than ``threshold``, only
  the cond items are attended and the uncond items get the cond output.

Costs: a host sync per decision (one per selected call, two when cond/uncond sharing is also tried), and memory for
one anchor (q, k, v, the bias and the output, held rather than copied) per selected site, for the length of the
sampling run.
Threshold 0 never reuses: the effect is then neutral. Token merging nests inside it (``innermost``), so what it
stores is always the full, unmerged output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .effect import AttnCall, Backend, Effect
from .maps import call_items
from .schedule import Schedule
from .site import COND, CROSS, JOINT, SELF, UNCOND, Site


def relative_change(new: AttnCall, old: AttnCall) -> float:
    """q, k, v: b h n d each (same shapes in both calls) -> sum |new - old| / sum |old| over q, k and v; inf when
    the biases differ. One host sync."""
    if not same_bias(new.bias, old.bias):
        return float("inf")
    pairs = tuple(zip((new.q, new.k, new.v), (old.q, old.k, old.v)))
    diff = torch.stack([(a - b).abs().sum(dtype=torch.float32) for a, b in pairs]).sum()
    size = torch.stack([b.abs().sum(dtype=torch.float32) for _, b in pairs]).sum()
    return float(diff / size.clamp_min(torch.finfo(torch.float32).tiny))


def same_bias(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two additive biases (or None) are the same tensor values."""
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(torch.equal(a, b))


@dataclass
class Anchor:
    """The inputs a site last attended (q, k, v), and what that returned: b n (h d)."""

    call: AttnCall
    out: torch.Tensor


@dataclass
class ReuseMemory:
    """One sampling run's anchors, keyed by site, and how often each path was taken."""

    anchors: dict = field(default_factory=dict)
    computed: int = 0
    reused: int = 0
    shared: int = 0

    @property
    def calls(self) -> int:
        return self.computed + self.reused


def chunk_items(site: Site, label: int) -> list[int]:
    """Batch items of the first chunk labelled ``label`` (0 cond, 1 uncond); [] if the call has none."""
    if label not in site.chunks:
        return []
    first = site.chunks.index(label) * site.batch_per_chunk
    return list(range(first, first + site.batch_per_chunk))


def chunk_view(call: AttnCall, items: list[int]) -> AttnCall:
    """The call on one chunk's batch items (a contiguous range) as views; the bias must be shared (batch 1)."""
    rows = slice(items[0], items[-1] + 1)
    return AttnCall(call.q[rows], call.k[rows], call.v[rows], call.bias)


class AttentionReuse(Effect):
    """DiTFastAttn-style reuse (Yuan et al. 2024): skip attention where its inputs barely changed."""

    node_id = "AttnLabAttentionReuse"
    supported_kinds = frozenset({SELF, JOINT, CROSS})

    def __init__(self, schedule: Schedule, threshold: float, across_steps: bool = True, across_cfg: bool = True):
        super().__init__(schedule)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), not {threshold}")
        self.threshold, self.across_steps, self.across_cfg = float(threshold), bool(across_steps), bool(across_cfg)

    @property
    def neutral(self) -> bool:
        return self.threshold == 0.0 or not (self.across_steps or self.across_cfg)

    def new_memory(self) -> ReuseMemory:
        return ReuseMemory()

    def attend(self, call: AttnCall, site: Site, inner: Backend) -> torch.Tensor:
        memory = self.run_memory(site)
        if memory is None or self.schedule.items(site) is not None:
            return inner(call)  # outside a sampling run, or only one of cond/uncond selected: nothing to reuse
        key = (site.block, site.kind, site.chunks, tuple(call.q.shape), tuple(call.k.shape))
        anchor = memory.anchors.get(key)
        if self.across_steps and anchor is not None and relative_change(call, anchor.call) < self.threshold:
            memory.reused += 1
            return anchor.out
        out = self._compute(call, site, inner, memory)
        memory.computed += 1
        if self.across_steps:
            memory.anchors[key] = Anchor(call, out)  # references: the host makes fresh q, k, v for every call
        return out

    def _compute(self, call: AttnCall, site: Site, inner: Backend, memory: ReuseMemory) -> torch.Tensor:
        """Attention of ``call``; the uncond items copy the cond items' output when their inputs are close enough."""
        cond, uncond = chunk_items(site, COND), chunk_items(site, UNCOND)
        if not (self.across_cfg and cond and uncond and (call.bias is None or call.bias.shape[0] == 1)):
            return inner(call)
        if relative_change(chunk_view(call, uncond), chunk_view(call, cond)) >= self.threshold:
            return inner(call)
        memory.shared += 1
        rest = [i for i in range(call.q.shape[0]) if i not in uncond]
        part = inner(call_items(call, rest))
        out = part.new_empty(call.q.shape[0], *part.shape[1:])
        out[rest] = part
        out[uncond] = part[[rest.index(i) for i in cond]]
        return out

    def report(self, memory: ReuseMemory) -> str:
        calls = max(1, memory.calls)
        return (f"{self.node_id}: reused {memory.reused} of {memory.calls} attention calls from an earlier step "
                f"({100 * memory.reused / calls:.0f}%), shared cond->uncond in {memory.shared} "
                f"({100 * memory.shared / calls:.0f}%)")

    def settings(self) -> str:
        paths = [name for name, on in (("steps", self.across_steps), ("cfg", self.across_cfg)) if on]
        return f"threshold={self.threshold:g} across={'+'.join(paths) or 'nothing'}"
