"""The regional-prompting effect: image tokens inside region r attend to the base prompt and region r's prompt,
outside to the base prompt only; in joint attention a region's text sees only its region's image tokens; optional
isolation keeps regions' image tokens apart. Modes: hard masks, DenseDiffusion's modulation, eDiff-I's
paint-with-words (math and papers in ``regions``).

The prompts ride in the conditioning as one joined context (base tokens, then each region's). The effect finds,
per model call, which batch items carry a joined context (whatever the host's cond/uncond order, and when it
repeated a shorter context to batch it), and changes only those, plus uncond items for isolation when asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from . import regions as rg
from .context import match_items
from .effect import AttnCall, Backend, Effect, ModelInputs
from .maps import RowRunner, add_bias, default_chunk, explicit_attention, run_rows, split_items
from .schedule import Schedule
from .site import CROSS, JOINT, SELF, UNCOND, Site


@dataclass(frozen=True)
class RegionSet:
    """The regions of one AttnLabRegionalPrompt: the joined contexts it made (1 T C each, one per base
    conditioning entry), their token labels, masks R F H W in [0, 1], strengths, and pixel frames per latent
    frame (for mask batches over video frames)."""

    contexts: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    masks: torch.Tensor
    strengths: tuple[float, ...]
    temporal: int = 1


@dataclass
class RegionCall:
    """Per model call: which joined context each batch item carries (None: not ours), and caches per token grid
    and per text length."""

    items: list[int | None]
    cache: dict = field(default_factory=dict)


@dataclass
class RegionSite:
    """What the runners of one site need: masks R N on the site's grid, strengths R, text-key labels b T (None
    without text keys), per-item switches for image-to-image rules, and the knobs."""

    site: Site
    masks: torch.Tensor
    strengths: torch.Tensor
    labels: torch.Tensor | None
    image_items: torch.Tensor  # b bool
    isolation: float
    weight: float
    image_rules: bool  # whether image-to-image rules (isolation, dense self modulation) run at this site

    def subset(self, items: list[int]) -> "RegionSite":
        index = torch.tensor(items, device=self.masks.device)
        labels = self.labels[index] if self.labels is not None else None
        return replace(self, labels=labels, image_items=self.image_items[index])

    def weights(self, rows: slice) -> torch.Tensor:
        """R c: mask x strength at image query rows ``rows``."""
        return self.masks[:, rows] * self.strengths[:, None]

    def image_part(self, rows: slice) -> torch.Tensor:
        """b 1 c N: the isolation bias between the query rows and every image key (0 for items it skips)."""
        c, n = self.masks[:, rows].shape[1], self.masks.shape[1]
        if self.isolation == 0:
            return self.masks.new_zeros(1, 1, c, n)
        bias = rg.isolation_bias(self.masks[:, rows], self.masks, self.isolation)
        return torch.where(self.image_items.view(-1, 1, 1, 1), bias, 0.0)

    def keys(self, image: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor | None:
        """Join per-key pieces (b? h? c N over image keys, b? h? c T over text keys; None: zeros) in the site's
        key order. Self attention has image keys only, cross attention text keys only."""
        kind, layout = self.site.kind, self.site.layout
        if kind != JOINT:
            return image if kind == SELF else text
        like = image if image is not None else text
        if like is None:
            return None
        c = like.shape[-2]
        image = image if image is not None else like.new_zeros(1, 1, c, len(layout.img_k))
        text = text if text is not None else like.new_zeros(1, 1, c, len(layout.txt_k))
        lead = torch.broadcast_shapes(image.shape[:-1], text.shape[:-1])
        pieces = sorted([(layout.img_k.start, image.expand(*lead, image.shape[-1])),
                         (layout.txt_k.start, text.expand(*lead, text.shape[-1]))], key=lambda p: p[0])
        return torch.cat([p for _, p in pieces], dim=-1)


def _to(bias: torch.Tensor | None, call: AttnCall) -> torch.Tensor | None:
    return bias.to(call.q.dtype) if bias is not None else None


def _image_rows(site: Site, start: int, stop: int) -> slice:
    offset = site.layout.img_q.start
    return slice(start - offset, stop - offset)


def _hard(rs: RegionSite, call: AttnCall, inner: Backend) -> RowRunner:
    def run(rows: AttnCall, start: int, stop: int) -> torch.Tensor:
        sel = _image_rows(rs.site, start, stop)
        text = rg.hard_text_bias(rs.weights(sel), rs.labels) if rs.labels is not None else None
        return inner(rows.with_(bias=add_bias(rows.bias, _to(rs.keys(rs.image_part(sel), text), rows))))
    return run


def _scaled_peak(call: AttnCall, site: Site) -> torch.Tensor:
    """b h: the largest scaled score from an image query to a text key (eDiff-I's max(QK^T))."""
    q, k = call.q[:, :, site.layout.img_q.as_slice()], call.k[:, :, site.layout.txt_k.as_slice()]
    chunk = default_chunk(q.shape[2], k.shape[2])
    scale = q.shape[-1] ** -0.5
    peaks = [torch.einsum("bhcd,bhmd->bhcm", q[:, :, a:a + chunk].float(), k.float()).amax(dim=(2, 3))
             for a in range(0, q.shape[2], chunk)]
    return torch.stack(peaks).amax(dim=0) * scale


def _paint(rs: RegionSite, call: AttnCall, inner: Backend) -> RowRunner:
    peak = _scaled_peak(call, rs.site) if rs.labels is not None else None

    def run(rows: AttnCall, start: int, stop: int) -> torch.Tensor:
        sel = _image_rows(rs.site, start, stop)
        text = None
        if peak is not None:
            text = rg.paint_text_bias(rs.weights(sel), rs.labels, peak, rs.weight, rs.site.sigma)
        return inner(rows.with_(bias=add_bias(rows.bias, _to(rs.keys(rs.image_part(sel), text), rows))))
    return run


def _dense(rs: RegionSite, call: AttnCall, inner: Backend) -> RowRunner:
    decay = rs.weight * rg.dense_decay(rs.site.percent)
    key_gain = None
    if rs.labels is not None:
        per_region = decay * rs.strengths * (1 - rs.masks.mean(dim=1))
        key_gain = rg.gather_labels(per_region[:, None], rs.labels, 0.0, 0.0).squeeze(-1)[:, None, None, :]

    def modulate(logits: torch.Tensor, sel: slice) -> torch.Tensor:
        b, c = logits.shape[0], logits.shape[2]
        target_txt = gain_txt = None
        if rs.labels is not None:
            target_txt = rg.gather_labels(rs.masks[:, sel], rs.labels, 0.0, 0.0).transpose(-1, -2).unsqueeze(1)
            gain_txt = key_gain.expand(b, 1, c, -1)
        target_img = rg.same_region(rs.masks[:, sel], rs.masks)[None, None]
        gain_img = torch.where(rs.image_items.view(-1, 1, 1, 1), decay, 0.0).expand(b, 1, c, rs.masks.shape[1])
        return rg.dense_modulate(logits, rs.keys(target_img, target_txt), rs.keys(gain_img, gain_txt))

    def run(rows: AttnCall, start: int, stop: int) -> torch.Tensor:
        sel = _image_rows(rs.site, start, stop)
        isolation = rs.keys(rs.image_part(sel), None) if rs.isolation else None
        rows = rows.with_(bias=add_bias(rows.bias, isolation))
        return explicit_attention(rows, lambda logits: modulate(logits, sel))
    return run


# mode -> (runner for image query rows, whether its per-chunk tensors carry a head axis: bounds the chunk size)
MODES: dict[str, tuple[Callable[[RegionSite, AttnCall, Backend], RowRunner], bool]] = {
    "hard": (_hard, False), "dense": (_dense, True), "paint": (_paint, True)}


def _text_rows(rs: RegionSite, inner: Backend) -> RowRunner:
    """Text query rows of joint attention: each prompt's text sees itself and its region (hard, in every mode)."""
    txt, img_first = rs.site.layout.txt_q, rs.site.layout.img_k.start < rs.site.layout.txt_k.start

    def run(rows: AttnCall, start: int, stop: int) -> torch.Tensor:
        row_labels = rs.labels[:, start - txt.start:stop - txt.start]
        bias = rg.text_rows_bias(row_labels, rs.labels, rs.masks, img_first)
        return inner(rows.with_(bias=add_bias(rows.bias, _to(bias, rows))))
    return run


class RegionalPrompt(Effect):
    """Regional prompting in attention (see the module docstring)."""

    node_id = "AttnLabRegionalPrompt"
    supported_kinds = frozenset({SELF, CROSS, JOINT})

    def __init__(self, schedule: Schedule, regions: RegionSet, mode: str = "hard", isolation: float = 0.0,
                 weight: float = 1.0):
        super().__init__(schedule)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
        self.regions, self.mode, self.isolation, self.weight = regions, mode, float(isolation), float(weight)

    @property
    def neutral(self) -> bool:
        return not any(self.regions.strengths) and self.isolation == 0

    def prepare(self, inputs: ModelInputs) -> RegionCall:
        if inputs.context is None:
            return RegionCall([None] * len(inputs.chunks))
        return RegionCall(match_items(inputs.context, self.regions.contexts))

    def _site_masks(self, state: RegionCall, site: Site, device) -> torch.Tensor:
        grid = site.layout.grid
        if grid not in state.cache:
            try:
                state.cache[grid] = rg.grid_masks(self.regions.masks, grid, self.regions.temporal).to(device)
            except ValueError as e:
                frames, t = grid[0], self.regions.temporal
                raise ValueError(f"AttnLabRegion: input 'mask': {e}. Fix: give one mask, or one per frame "
                                 f"({(frames - 1) * t + 1} video frames or {frames} latent frames).") from None
        return state.cache[grid]

    @staticmethod
    def _on_device(state: RegionCall, key, make: Callable[[], torch.Tensor], device) -> torch.Tensor:
        """``make()`` moved to ``device`` once per model call (cached under ``key``)."""
        if key not in state.cache:
            state.cache[key] = make().to(device)
        return state.cache[key]

    def _text_items(self, state: RegionCall, site: Site) -> list[bool]:
        """Per batch item: whether it carries a joined context that fits this site's text keys."""
        txt = site.layout.txt_k
        if site.kind == SELF or txt is None:
            return [False] * len(state.items)
        return [i is not None and len(txt) % len(self.regions.labels[i]) == 0 for i in state.items]

    def _labels(self, state: RegionCall, site: Site, device) -> torch.Tensor:
        """b T: the label of each text key for each batch item (NOT_OURS for items without a joined context)."""
        n = len(site.layout.txt_k)
        if ("labels", n) not in state.cache:
            rows = [rg.repeat_labels(self.regions.labels[i], n) if i is not None
                    else torch.full((n,), rg.NOT_OURS, dtype=torch.long) for i in state.items]
            state.cache[("labels", n)] = torch.stack(rows).to(device)
        return state.cache[("labels", n)]

    def _image_items(self, state: RegionCall, site: Site) -> list[bool]:
        """Per batch item: whether image-to-image rules may change it (ours, or uncond when apply_to asks)."""
        selected = self.schedule.items(site) or (True,) * len(state.items)
        chunk_of = [c for c in site.chunks for _ in range(site.batch_per_chunk)]
        return [i is not None or (sel and chunk == UNCOND) for i, sel, chunk in zip(state.items, selected, chunk_of)]

    def _touched(self, state: RegionCall, site: Site) -> tuple[list[bool], list[bool], bool]:
        """(text items, image items, whether image rules run here): all known on the host, no device sync."""
        text = self._text_items(state, site)
        image = self._image_items(state, site)
        image_rules = site.kind != CROSS and (self.isolation > 0 or self.mode == "dense") and any(image)
        return text, image, image_rules

    def attend(self, call: AttnCall, site: Site, inner: Backend) -> torch.Tensor:
        state: RegionCall | None = self.state(site)
        if (state is None or len(state.items) != call.q.shape[0] or site.layout.grid is None
                or site.layout.img_q is None):
            return inner(call)
        text, image, image_rules = self._touched(state, site)
        touched = [t or (i and image_rules) for t, i in zip(text, image)]
        if not any(touched):
            return inner(call)
        device = call.q.device
        strengths = self._on_device(state, "strengths", lambda: torch.tensor(self.regions.strengths), device)
        items = self._on_device(state, ("items", tuple(image)), lambda: torch.tensor(image), device)
        rs = RegionSite(site, self._site_masks(state, site, device), strengths,
                        self._labels(state, site, device) if any(text) else None, items, self.isolation,
                        self.weight, image_rules)
        if all(touched):
            return self._run(rs, call, site, inner)
        return split_items(call, touched, lambda sub, idx: self._run(rs.subset(idx), sub, site, inner), inner)

    def _run(self, rs: RegionSite, call: AttnCall, site: Site, inner: Backend) -> torch.Tensor:
        runner, per_head = MODES[self.mode]
        spans = [(site.layout.img_q, runner(rs, call, inner))]
        if site.kind == JOINT and rs.labels is not None and site.layout.txt_q is not None:
            spans.append((site.layout.txt_q, _text_rows(rs, inner)))
        b, h, _, _ = call.q.shape
        chunk = default_chunk(call.q.shape[2], call.k.shape[2] * b * (h if per_head else 1))
        return run_rows(call, spans, inner, chunk)

    def settings(self) -> str:
        shown = ", ".join(f"{s:g}" for s in self.regions.strengths)
        return f"{self.mode} regions={len(self.regions.strengths)} strengths=[{shown}] isolation={self.isolation:g}"
