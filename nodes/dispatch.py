"""Runtime side of the engine: the objects the host calls during sampling.

- ``apply_model_wrapper`` (an APPLY_MODEL wrapper) opens a ``CallContext`` for each model call: the stack,
  the family, sigma and progress, cond/uncond chunks, the latent shape. It rides in a copy of
  ``transformer_options``, so nothing leaks into other calls or branches.
- ``Dispatcher`` is the ``optimized_attention_override``: it builds the ``Site`` of each attention call and runs
  the effects that apply; calls where none applies go to the host's backend untouched. It chains to whatever
  override was there before it.
- ``BlockTagger`` (a DiT block replace, chained to any earlier replace) and ``UnetTag``/``UnetCheck`` (UNet attn
  patch lists) tell the dispatcher which block and which attention of the block a call belongs to.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..attention.address import BlockAddress
from ..attention.effect import PREPARED, RUN, AttnCall, ModelInputs, RunMemory, run_effects
from ..attention.guidance import GUIDANCE_CHUNKS
from ..attention.sag import STEP_STATE
from ..attention.layout import full_rows, mask_to_bias, to_bhnd
from ..attention.site import CROSS, JOINT, Site, Span, TokenLayout
from .families import BY_NAME, UNET, DitGroup, Family

log = logging.getLogger("attnlab")

STACK_KEY = "attnlab_stack"
FAMILY_KEY = "attnlab_family"
CTX_KEY = "attnlab_ctx"
TAG_KEY = "attnlab_block"
PLAN_KEY = "attnlab_guidance_plan"  # per chunk label, the guidance perturbation that chunk runs
STEP_KEY = "attnlab_step_state"  # a dict living from the sampler's main call to its post-CFG term
RUN_KEY = "attnlab_run"  # a RunMemory living for one sampling run (effects' memory across steps)
_POSITIONAL = ("mask", "attn_precision", "skip_reshape", "skip_output_reshape")
_warned: set = set()


def warn_once(key, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def callable_name(fn) -> str:
    fn = getattr(fn, "func", fn)
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


@dataclass
class BlockTag:
    """Marks the attention calls made inside one DiT block call; counts them to tell their kinds apart."""

    address: BlockAddress
    group: DitGroup
    calls: int = 0

    def next_kind(self) -> str:
        self.calls += 1
        return self.group.kind_at(self.calls - 1)


def _schedule_progress(sigma: float, sample_sigmas) -> float | None:
    """Fraction of the sampling schedule done at ``sigma`` (0 at the first step), or None without a schedule."""
    if sample_sigmas is None or len(sample_sigmas) < 2:
        return None
    done = int((sample_sigmas > sigma * (1 + 1e-5)).sum())
    return min(1.0, done / (len(sample_sigmas) - 1))


class CallContext:
    """State of one model call (one forward of the diffusion model)."""

    def __init__(self, stack, family: Family, x: torch.Tensor, t: torch.Tensor, transformer_options: dict,
                 context: torch.Tensor | None = None):
        self.stack, self.family, self.options = stack, family, transformer_options
        self.sigma = float(t.max())  # the only host sync: once per model call, never per attention call
        self.percent = _schedule_progress(self.sigma, transformer_options.get("sample_sigmas"))
        self.chunks = tuple(transformer_options.get("cond_or_uncond") or (0,))
        self.latent_shape = tuple(x.shape)
        self.plan = transformer_options.get(PLAN_KEY)
        self.step_state = transformer_options.get(STEP_KEY)
        self.run = transformer_options.get(RUN_KEY)
        self.active = [e for e in stack.live if e.runs_in(self.plan) and e.schedule.active_at(self.sigma)
                       and any(e.schedule.chunk_selected(c) for c in self.chunks)]
        self.live = bool(self.active)
        inputs = ModelInputs(context, self.chunks, self.sigma)
        self.prepared = {id(e): e.prepare(inputs) for e in self.active}
        self.busy = False
        self.reached = 0
        self.unet_kind: str | None = None
        self.unet_pending = False
        self.txt_len: int | None = None
        self._native = (None, 0)

    # -- where a call sits -------------------------------------------------------------------------------
    def _unet_where(self, to: dict) -> tuple[BlockAddress | None, str | None]:
        block = to.get("block")
        self.unet_pending = False
        if block is None or self.unet_kind is None:
            return None, None
        return BlockAddress(block[0], int(block[1]), int(to.get("block_index", 0))), self.unet_kind

    def _native_where(self, to: dict) -> tuple[BlockAddress | None, str | None]:
        group = self.family.native_groups.get(to.get("block_type"))
        if group is None or to.get("block_index") is None:
            return None, None
        key = (group, int(to["block_index"]))
        calls = self._native[1] + 1 if self._native[0] == key else 0
        self._native = (key, calls)
        dit_group = next(g for g in self.family.dit_groups if g.group == group)
        return BlockAddress(*key), dit_group.kind_at(calls)

    def _dit_where(self, to: dict) -> tuple[BlockAddress | None, str | None]:
        tag = to.get(TAG_KEY)
        if tag is not None:
            return tag.address, tag.next_kind()
        return self._native_where(to)

    # -- token layout -------------------------------------------------------------------------------------
    def _grid(self, to: dict) -> tuple[int, int, int]:
        if self.family.arch == UNET:
            shape = to.get("activations_shape") or self.latent_shape
            return (1, int(shape[-2]), int(shape[-1]))
        shape = self.latent_shape
        frames = shape[2] if len(shape) == 5 else 1
        pt, ph, pw = self.family.patch
        return (math.ceil(frames / pt), math.ceil(shape[-2] / ph), math.ceil(shape[-1] / pw))

    def _joint_spans(self, n: int, grid, to: dict) -> tuple[Span, Span]:
        img_slice = to.get("img_slice")
        if img_slice is not None:
            img = Span(int(img_slice[0]), int(img_slice[1]))
            return img, (Span(0, img.start) if img.start > 0 else Span(img.stop, n))
        txt = self.txt_len if self.txt_len is not None else max(0, n - grid[0] * grid[1] * grid[2])
        if self.family.joint_txt_first(to):
            return Span(txt, n), Span(0, txt)
        return Span(0, n - txt), Span(n - txt, n)

    def _layout(self, kind: str, n_q: int, n_k: int, to: dict) -> TokenLayout:
        grid = self._grid(to)
        area = self.latent_shape[-2] * self.latent_shape[-1] * self.family.vae_scale ** 2
        if kind == JOINT:
            img, txt = self._joint_spans(n_q, grid, to)
            return TokenLayout(n_q, n_k, grid, img, img, txt, txt, area)
        if kind == CROSS:
            return TokenLayout(n_q, n_k, grid, Span(0, n_q), None, None, Span(0, n_k), area)
        return TokenLayout(n_q, n_k, grid, Span(0, n_q), Span(0, n_k), None, None, area)

    def where(self, to: dict) -> tuple[BlockAddress | None, str | None]:
        """Block address and attention kind of the current call; advances the per-block call counters."""
        return self._unet_where(to) if self.family.arch == UNET else self._dit_where(to)

    def candidates(self, block: BlockAddress | None, kind: str | None) -> list:
        """Effects active in this model call whose blocks and kinds select (block, kind): a cheap pre-filter."""
        if block is None:
            return []
        return [e for e in self.active if e.may_apply(block, kind)]

    def site(self, block: BlockAddress, kind: str, q: torch.Tensor, k: torch.Tensor, heads: int, to: dict) -> Site:
        """The Site of a call whose q, k are in canonical b h n d layout."""
        b, _, n_q, head_dim = q.shape
        layout = self._layout(kind, n_q, k.shape[2], to)
        return Site(self.family.name, kind, block, heads, head_dim, layout, self.sigma, self.percent,
                    self.chunks, {"batch_per_chunk": max(1, b // len(self.chunks)), GUIDANCE_CHUNKS: self.plan,
                     STEP_STATE: self.step_state, PREPARED: self.prepared, RUN: self.run})

    # -- after the model call -----------------------------------------------------------------------------
    def finish(self) -> None:
        if not self.live:
            return
        self._check_block_replaces()
        if self.reached == 0:
            current = self.options.get("optimized_attention_override")
            warn_once(("dropped", callable_name(current)),
                      "Attention Lab: the attention override was replaced by %s, installed after the Attention Lab "
                      "nodes without chaining to them; their effects do nothing. Put the Attention Lab nodes after "
                      "the node that installs %s.", callable_name(current), callable_name(current))

    def _check_block_replaces(self) -> None:
        """Warn once about DiT block replaces installed after ours without chaining (we tag every block, so any
        foreign entry replaced ours there)."""
        dit = self.options.get("patches_replace", {}).get("dit", {})
        for group in self.family.dit_groups:
            for (kind, index), fn in dit.items():
                if kind == group.replace_kind and not is_ours(fn):
                    warn_once(("block", kind, index, callable_name(fn)),
                              "Attention Lab: the block replace %s at %s.%d was installed after the Attention Lab "
                              "nodes without chaining to them; effects in that block are skipped. Put the Attention "
                              "Lab nodes after the node that installs it.", callable_name(fn), group.group, index)


@dataclass
class _Parsed:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    heads: int
    kwargs: dict


def _parse(args: tuple, kwargs: dict) -> _Parsed:
    """Normalise a backend call (q, k, v, heads, [mask, attn_precision, ...], **kw) to tensors and kwargs."""
    kwargs = dict(kwargs)
    q, k, v = args[:3]
    heads = args[3] if len(args) > 3 else kwargs.pop("heads")
    kwargs.update(zip(_POSITIONAL, args[4:]))
    return _Parsed(q, k, v, int(heads), kwargs)


class Dispatcher:
    """The pack's ``optimized_attention_override``: runs the stack's effects around the host's backend."""

    _attnlab = True

    def __init__(self, prev=None):
        self.prev = prev

    def __deepcopy__(self, memo):
        return self

    def _next(self, func, args, kwargs):
        if self.prev is not None:
            return self.prev(func, *args, **kwargs)
        return func(*args, **kwargs)

    def __call__(self, func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        ctx = to.get(CTX_KEY)
        if ctx is None or ctx.busy:
            return self._next(func, args, kwargs)
        ctx.reached += 1
        if not ctx.live:
            return self._next(func, args, kwargs)
        block, kind = ctx.where(to)
        effects = ctx.candidates(block, kind)
        if not effects:
            return self._next(func, args, kwargs)
        call = _parse(args, kwargs)
        skip = bool(call.kwargs.get("skip_reshape", False))
        q, k = to_bhnd(call.q, call.heads, skip), to_bhnd(call.k, call.heads, skip)
        site = ctx.site(block, kind, q, k, call.heads, to)
        effects = [e for e in effects if e.applies(site)]
        if not effects:
            return self._next(func, args, kwargs)
        ctx.busy = True
        try:
            return self._run(func, call, AttnCall(q, k, to_bhnd(call.v, call.heads, skip)), site, effects)
        finally:
            ctx.busy = False

    def _run(self, func, call: _Parsed, attn: AttnCall, site: Site, effects) -> torch.Tensor:
        kwargs = call.kwargs
        attn = attn.with_(bias=mask_to_bias(kwargs.pop("mask", None), attn.q.dtype))
        want_bhnd = bool(kwargs.get("skip_output_reshape", False))

        def backend(c: AttnCall) -> torch.Tensor:
            kw = dict(kwargs, skip_reshape=True, skip_output_reshape=False)
            if c.bias is not None:
                kw["mask"] = full_rows(c.bias, c.q.shape[2])
            return self._next(func, (c.q, c.k, c.v, c.heads), kw)

        out = run_effects(effects, attn, site, backend)
        if want_bhnd:
            b, n, _ = out.shape
            return out.view(b, n, site.heads, -1).transpose(1, 2)
        return out


class BlockTagger:
    """A DiT block replace that tags the block's attention calls with their address, then runs the block
    (through the replace that was there before it, if any)."""

    _attnlab = True

    def __init__(self, group: DitGroup, index: int, prev=None):
        self.group, self.index, self.prev = group, index, prev

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict):
        to = args.get("transformer_options")
        ctx = to.get(CTX_KEY) if to is not None else None
        if ctx is not None:
            txt = args.get("txt")
            if JOINT in self.group.call_kinds and isinstance(txt, torch.Tensor):
                ctx.txt_len = txt.shape[1]
            to = dict(to)
            to[TAG_KEY] = BlockTag(BlockAddress(self.group.group, self.index), self.group)
            args = {**args, "transformer_options": to}
        if self.prev is not None:
            return self.prev(args, extra)
        return extra["original_block"](args)


class UnetTag:
    """UNet attn1_patch / attn2_patch entry: says which attention of the block runs next. Changes nothing."""

    _attnlab = True

    def __init__(self, kind: str):
        self.kind = kind

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, context, value, extra_options):
        ctx = extra_options.get(CTX_KEY)
        if ctx is not None:
            ctx.unet_kind, ctx.unet_pending = self.kind, True
        return n, context, value


class UnetCheck:
    """UNet attn1/attn2 output patch: warns once when another pack's attention replace kept the call from
    reaching the override (so effects could not run there). Changes nothing."""

    _attnlab = True

    def __init__(self, slot: str):
        self.slot = slot

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, extra_options):
        ctx = extra_options.get(CTX_KEY)
        if ctx is not None and ctx.unet_pending and ctx.live:
            ctx.unet_pending = False
            block, depth = extra_options.get("block"), extra_options.get("block_index", 0)
            replaces = ctx.options.get("patches_replace", {}).get(self.slot, {})
            fn = replaces.get((block[0], block[1], depth), replaces.get(tuple(block))) if block else None
            warn_once(("bypass", self.slot, callable_name(fn)),
                      "Attention Lab: the %s replace %s computes attention without the host's override, so "
                      "Attention Lab effects are skipped in the blocks it replaces (first seen at %s.%s.%s).",
                      self.slot, callable_name(fn), *(block or ("?", "?")), depth)
        return n


def apply_model_wrapper(executor, x, t, *args, **kwargs):
    """APPLY_MODEL wrapper: opens a CallContext for this model call when the stack has live effects."""
    args = list(args)
    in_kwargs = "transformer_options" in kwargs or len(args) < 4
    to = kwargs.get("transformer_options", {}) if in_kwargs else args[3]
    stack = to.get(STACK_KEY)
    family = BY_NAME.get(to.get(FAMILY_KEY))
    if stack is None or not stack.live:
        return executor(x, t, *args, **kwargs)
    if family is None:
        warn_once(("family", to.get(FAMILY_KEY)), "Attention Lab: model family '%s' is not reachable; the effects on "
                  "this model do nothing.", to.get(FAMILY_KEY))
        return executor(x, t, *args, **kwargs)
    context = kwargs.get("c_crossattn", args[1] if len(args) > 1 else None)
    ctx = CallContext(stack, family, x, t, to, context if isinstance(context, torch.Tensor) else None)
    to = dict(to)
    to[CTX_KEY] = ctx
    if in_kwargs:
        kwargs["transformer_options"] = to
    else:
        args[3] = to
    out = executor(x, t, *args, **kwargs)
    ctx.finish()
    return out


def sampler_run_wrapper(executor, guider, sigmas, extra_args, *args, **kwargs):
    """SAMPLER_SAMPLE wrapper: a fresh memory for effects that keep state across the run's steps; logs their
    reports when the run ends."""
    options = extra_args.get("model_options", {})
    to = dict(options.get("transformer_options", {}))
    run = to[RUN_KEY] = RunMemory()
    extra_args = {**extra_args, "model_options": {**options, "transformer_options": to}}
    try:
        return executor(guider, sigmas, extra_args, *args, **kwargs)
    finally:
        _report(to.get(STACK_KEY), run)


def _report(stack, run: RunMemory) -> None:
    for effect in stack.live if stack is not None else ():
        memory = run.by_effect.get(id(effect))
        line = effect.report(memory) if memory is not None else None
        if line:
            log.info("Attention Lab: %s", line)


def is_ours(fn) -> bool:
    return getattr(fn, "_attnlab", False)
