"""Normalized Attention Guidance (Chen et al. 2025), with its negative context in a lockstep companion chunk."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .effect import AttnCall, Effect
from .guidance import GUIDANCE_CHUNKS, nag
from .layout import bhnd_to_bnhd
from .schedule import Schedule
from .site import CROSS, JOINT, Site, image_rows


@dataclass(frozen=True)
class NegativeChunk:
    """Plan entry: a chunk that carries ``effect``'s negative context, kept in lockstep with the cond chunk."""

    effect: "NAG"


class NAG(Effect):
    """Normalized Attention Guidance (Chen et al. 2025): in cross-attention (and the image rows of joint
    attention) the positive output is extrapolated away from the output for a negative context, norm-clipped
    by ``tau`` and blended by ``alpha``. Gives distilled and few-step models at cfg 1 a negative prompt.

    The negative context rides in a companion chunk of the same batch; at every site the companion's image
    tokens are set to the cond's, so its hidden state follows the cond exactly and only its text differs.
    """

    node_id = "AttnLabNAG"
    supported_kinds = frozenset({CROSS, JOINT})

    def __init__(self, schedule: Schedule, negative_context: torch.Tensor, scale: float = 5.0, tau: float = 2.5,
                 alpha: float = 0.25):
        super().__init__(schedule)
        self.negative_context = negative_context
        self.scale, self.tau, self.alpha = float(scale), float(tau), float(alpha)

    @property
    def neutral(self) -> bool:
        return self.scale == 1.0 or self.alpha == 0.0

    def runs_in(self, plan) -> bool:
        return plan is not None and NegativeChunk(self) in plan

    def may_apply(self, block, kind) -> bool:
        return True  # every site: the companion chunk must follow the cond everywhere

    def applies(self, site: Site) -> bool:
        return not self.neutral and bool(self.pairs(site))

    def pairs(self, site: Site) -> list[tuple[int, int]]:
        """(cond item, companion item) batch index pairs at ``site``."""
        plan, bpc = site.extras.get(GUIDANCE_CHUNKS) or (), site.batch_per_chunk
        chunks = list(site.chunks)
        if 0 not in chunks:
            return []
        mine = [i for i, c in enumerate(chunks) if c < len(plan) and plan[c] == NegativeChunk(self)]
        if not mine:
            return []
        cond, neg = chunks.index(0), mine[0]
        return [(cond * bpc + j, neg * bpc + j) for j in range(bpc)]

    def attend(self, call: AttnCall, site: Site, inner) -> torch.Tensor:
        pairs = self.pairs(site)
        if not pairs:
            return inner(call)
        cond, neg = (list(t) for t in zip(*pairs))
        guide = site.kind in self.supported_kinds and self.schedule.matches(site)
        out = self._guided(call, site, cond, neg, inner) if guide else inner(call).clone()
        rows = image_rows(site) if site.kind == JOINT else slice(None)
        out[neg, rows] = out[cond, rows]
        return out

    def _guided(self, call: AttnCall, site: Site, cond: list, neg: list, inner) -> torch.Tensor:
        """The cond items' output with NAG; the negative branch runs as one fused SDPA call of its own, outside
        the other effects' batch (whose item masks it must not disturb)."""
        k_neg, v_neg = call.k[neg], call.v[neg]
        if site.kind == JOINT:  # image rows attend to the negative text and their own image tokens
            img = site.layout.img_k.as_slice()
            k_neg, v_neg = k_neg.clone(), v_neg.clone()
            k_neg[:, :, img], v_neg[:, :, img] = call.k[cond][:, :, img], call.v[cond][:, :, img]
        bias = call.bias[cond] if call.bias is not None and call.bias.shape[0] > 1 else call.bias
        out_neg = bhnd_to_bnhd(F.scaled_dot_product_attention(call.q[cond], k_neg, v_neg, attn_mask=bias))
        out = inner(call).clone()
        rows = image_rows(site)
        out[cond, rows] = nag(out[cond, rows], out_neg[:, rows].to(out.dtype), self.scale, self.tau, self.alpha)
        return out

    def settings(self) -> str:
        return f"scale={self.scale:g} tau={self.tau:g} alpha={self.alpha:g}"
