"""Token reweighting: change the attention image tokens pay to chosen text tokens.

"p2p" follows Prompt-to-Prompt's reweighting (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross
Attention Control"): the probabilities of the chosen tokens are multiplied without renormalising, which equals
scaling those tokens' values. "renormalise" adds log(weight) to their logits, so the row still sums to one.
Both keep the host's fused kernel; in joint attention only the image query rows are changed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from .context import REPEAT, prompt_items
from .effect import AttnCall, Backend, Effect, ModelInputs
from .maps import RowRunner, add_bias, call_rows, run_rows
from .schedule import Schedule
from .site import COND, CROSS, JOINT, Site, Span

log = logging.getLogger("attnlab")
_warned: set = set()


@dataclass(frozen=True)
class TokenWeighting:
    """Weights for token positions of one prompt whose context is ``length`` tokens long; ``context`` (1 L C), the
    prompt's encoding, finds the batch items that carry the prompt (None: every item whose text length is a
    multiple of ``length``)."""

    length: int
    weights: tuple[tuple[int, float], ...]  # (position in the context, weight)
    context: torch.Tensor | None = None

    def item_weights(self, how: str | None, n_txt: int) -> torch.Tensor:
        """(n_txt,) weight per text key of an item whose context repeats the prompt (REPEAT: the host repeats a
        shorter context to batch it), starts with it (PREFIX), or does not carry it (None: all ones)."""
        out = torch.ones(n_txt)
        if how is None or (how == REPEAT and n_txt % self.length) or n_txt < self.length:
            return out
        copies = n_txt // self.length if how == REPEAT else 1
        for pos, w in self.weights:
            out[[pos + i * self.length for i in range(copies)]] = w
        return out


@dataclass
class PromptCall:
    """Per model call: which items carry the prompt, and the key factors built for each key layout."""

    found: list[str | None]
    factors: dict = field(default_factory=dict)


def key_factors(weights: torch.Tensor, n_k: int, txt: Span, items: tuple[bool, ...] | None,
                neutral: float) -> torch.Tensor:
    """b n_txt text-key factors -> b 1 m 1 over all keys (``neutral`` outside the text span and for unselected
    batch items)."""
    batch = weights.shape[0]
    full = torch.full((batch, n_k), neutral)
    full[:, txt.as_slice()] = weights
    full = full.view(batch, 1, n_k, 1)
    if items is None:
        return full
    keep = torch.tensor(items).view(-1, 1, 1, 1)
    return torch.where(keep, full, torch.full_like(full, neutral))


def _p2p(call: AttnCall, factors: torch.Tensor) -> AttnCall:
    """Scale values by b 1 m 1 factors: p_j v_j -> p_j w_j v_j, rows not renormalised."""
    return call.with_(v=call.v * factors.to(call.v))


def _renormalise(call: AttnCall, factors: torch.Tensor) -> AttnCall:
    """Add log(w) to the logits of each key: b 1 m 1 factors -> bias b 1 1 m."""
    bias = factors.transpose(-1, -2).to(device=call.q.device, dtype=torch.float32).log().to(call.q.dtype)
    return call.with_(bias=add_bias(call.bias, bias))


# mode -> (the call edit for b 1 m 1 key factors, whether negative weights make sense)
MODES: dict[str, tuple[Callable[[AttnCall, torch.Tensor], AttnCall], bool]] = {
    "p2p": (_p2p, True),
    "renormalise": (_renormalise, False),
}


class TokenWeights(Effect):
    """Reweight the attention image tokens pay to chosen text tokens (cross-attention, or the image-to-text part
    of joint attention)."""

    node_id = "AttnLabTokenWeights"
    supported_kinds = frozenset({CROSS, JOINT})

    def __init__(self, schedule: Schedule, weighting: TokenWeighting, mode: str = "p2p"):
        super().__init__(schedule)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
        if not MODES[mode][1] and any(w < 0 for _, w in weighting.weights):
            raise ValueError(f"mode '{mode}' takes weights of 0 or more")
        self.weighting, self.mode = weighting, mode

    @property
    def neutral(self) -> bool:
        return all(w == 1.0 for _, w in self.weighting.weights)

    def prepare(self, inputs: ModelInputs) -> PromptCall:
        """Per batch item: whether its context carries the prompt (REPEAT, PREFIX) or not (None)."""
        if self.weighting.context is None or inputs.context is None:
            found = [REPEAT] * (inputs.context.shape[0] if inputs.context is not None else len(inputs.chunks))
        else:
            found = prompt_items(inputs.context, self.weighting.context)
        return PromptCall(found)

    def _factors(self, call: AttnCall, site: Site) -> torch.Tensor | None:
        """b 1 m 1 key factors on the call's device (cached per model call and key layout), or None when no item
        carries the prompt or no weight changes anything here."""
        txt, state = site.layout.txt_k, self.state(site)
        if txt is None or state is None or len(state.found) != call.q.shape[0]:
            return None
        if not any(state.found):
            self._warn_unmatched(site)
            return None
        key = (call.k.shape[2], txt, self.schedule.items(site), call.q.device)
        if key not in state.factors:
            weights = torch.stack([self.weighting.item_weights(how, len(txt)) for how in state.found])
            state.factors[key] = None if bool((weights == 1).all()) else key_factors(
                weights, call.k.shape[2], txt, key[2], 1.0).to(call.q.device)
        return state.factors[key]

    def attend(self, call: AttnCall, site: Site, inner: Backend) -> torch.Tensor:
        factors = self._factors(call, site)
        if factors is None:
            return inner(call)
        edited = MODES[self.mode][0](call, factors)
        img = site.layout.img_q
        if site.kind != JOINT or img is None:
            return inner(edited)
        runner: RowRunner = lambda rows, a, z: inner(call_rows(edited, a, z))
        return run_rows(call, [(img, runner)], inner, max(1, len(img)))

    def _warn_unmatched(self, site: Site) -> None:
        if COND in site.chunks and id(self) not in _warned:
            _warned.add(id(self))
            log.warning("AttnLabTokenWeights: no conditioning in the batch carries the node's prompt, so the "
                        "weights do nothing. Type the prompt exactly as encoded for the sampler, with the same "
                        "CLIP.")

    def settings(self) -> str:
        shown = ", ".join(f"@{p}:{w:g}" for p, w in self.weighting.weights)
        return f"{self.mode} {shown}"

