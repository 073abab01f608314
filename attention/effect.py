"""Effects and the ordered stack that runs them around one attention call.

An effect changes attention at the sites its schedule selects, in three optional stages:
``pre`` edits the call (q, k, v, logit bias) so the host's fused kernel still runs; ``attend`` wraps the
attention computation itself (only effects that need explicit maps or extra passes override it); ``post``
edits the output. Stacked effects run ``pre`` in stack order, ``attend`` nested with the first effect
outermost, and ``post`` in reverse order, so a stack behaves like nested function application.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from .schedule import Schedule
from .site import Site


@dataclass(frozen=True)
class AttnCall:
    """q: b h n d, k/v: b h m d, bias: additive logits broadcastable to b h n m (or None), heads: h."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    def with_(self, **changes) -> "AttnCall":
        return replace(self, **changes)


Backend = Callable[[AttnCall], torch.Tensor]  # AttnCall -> b n (h d)

PREPARED = "prepared"  # Site.extras key: per-model-call state of each effect, keyed by id(effect)
RUN = "run"  # Site.extras key: the RunMemory of the sampling run the call belongs to


class RunMemory:
    """What effects keep for one sampling run, keyed by id(effect). Not a dict: the host copies nested dicts of
    transformer_options for every model call, and the memory must outlive the call."""

    def __init__(self):
        self.by_effect: dict = {}

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True)
class ModelInputs:
    """What effects may read of one model call: context b m c (the text conditioning, or None), the batch's
    chunk labels (0 cond, 1 uncond), sigma."""

    context: torch.Tensor | None
    chunks: tuple[int, ...]
    sigma: float


class Effect:
    """Base class: an attention effect with a schedule. Subclasses override some of pre/attend/post."""

    node_id: str = "AttnLab"
    supported_kinds: frozenset[str] | None = None  # None: any kind
    innermost: bool = False  # True: its ``attend`` shrinks the call, so it nests nearest the kernel wherever stacked

    def __init__(self, schedule: Schedule):
        self.schedule = schedule

    def __deepcopy__(self, memo):  # effects are immutable; the host's clone() may deep-copy options
        return self

    @property
    def neutral(self) -> bool:
        """True when the settings reproduce unpatched attention exactly (the effect is then never run)."""
        return False

    def runs_in(self, plan) -> bool:
        """Whether the effect takes part in a model call with this guidance ``plan`` (None: an ordinary call)."""
        return True

    def may_apply(self, block, kind: str) -> bool:
        """Cheap pre-filter before a Site is built: could the effect apply at this block and kind?"""
        return self.schedule.blocks.matches(block) and (self.schedule.kinds is None or kind in self.schedule.kinds)

    def supports(self, site: Site) -> bool:
        return self.supported_kinds is None or site.kind in self.supported_kinds

    def applies(self, site: Site) -> bool:
        return not self.neutral and self.supports(site) and self.schedule.matches(site)

    def prepare(self, inputs: ModelInputs):
        """Per-model-call state (read back at each site with ``state``), or None. Runs once per model call."""
        return None

    def state(self, site: Site):
        """What ``prepare`` returned for the model call ``site`` belongs to (None if nothing)."""
        return site.extras.get(PREPARED, {}).get(id(self))

    def new_memory(self):
        """State the effect keeps for a whole sampling run (made on first use), or None if it keeps none."""
        return None

    def run_memory(self, site: Site):
        """This effect's memory for the sampling run ``site`` belongs to; None outside a run or without memory."""
        run = site.extras.get(RUN)
        if run is None:
            return None
        if id(self) not in run.by_effect:
            run.by_effect[id(self)] = self.new_memory()
        return run.by_effect[id(self)]

    def report(self, memory) -> str | None:
        """A line for the log when a sampling run ends, from the run's memory (None: nothing to say)."""
        return None

    def pre(self, call: AttnCall, site: Site) -> AttnCall:
        return call

    def attend(self, call: AttnCall, site: Site, inner: Backend) -> torch.Tensor:
        return inner(call)

    def post(self, out: torch.Tensor, call: AttnCall, site: Site) -> torch.Tensor:
        return out

    def settings(self) -> str:
        return ""

    def describe(self) -> str:
        state = " (neutral: does nothing)" if self.neutral else ""
        return f"{self.node_id} {self.settings()} [{self.schedule.describe()}]{state}"


def _nest(effect: Effect, site: Site, inner: Backend) -> Backend:
    return lambda call: effect.attend(call, site, inner)


def run_effects(effects: Sequence[Effect], call: AttnCall, site: Site, backend: Backend) -> torch.Tensor:
    """Run ``effects`` (already filtered to those that apply) around ``backend``; returns b n (h d).

    Effects marked ``innermost`` (token merging, downsampling) nest nearest the kernel, in stack order among
    themselves, so every other effect's ``attend`` sees the full call its site describes."""
    effects = [e for e in effects if not e.innermost] + [e for e in effects if e.innermost]
    for effect in effects:
        call = effect.pre(call, site)
    inner = backend
    for effect in reversed(effects):
        inner = _nest(effect, site, inner)
    out = inner(call)
    for effect in reversed(effects):
        out = effect.post(out, call, site)
    return out


def per_item(values: torch.Tensor, items: tuple[bool, ...] | None, neutral: float) -> torch.Tensor:
    """Broadcast a per-site factor to b 1 1 1, with ``neutral`` for unselected batch items (items None: all)."""
    if items is None:
        return values
    mask = torch.tensor(items, device=values.device).view(-1, 1, 1, 1)
    return torch.where(mask, values, torch.full_like(values, neutral))
