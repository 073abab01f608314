"""Attention temperature: scale the attention logits, fixed or from the token count.

The resolution mode follows Jin et al. 2023, "Training-free Diffusion Model Adaptation to Variable-Sized
Text-to-Image Synthesis": scaling logits by sqrt(log N / log N_train), N the number of keys attended, keeps
the attention entropy a model had at its training resolution.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .effect import AttnCall, Effect, per_item
from .schedule import Schedule
from .site import CROSS, Site


def scale_logits(q: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """q: b h n d, scale: scalar or b 1 1 1 -> b h n d; (q*s)k^T = s*(qk^T), so the fused kernel still runs."""
    return q * scale


def entropy_scale(n_keys: float, n_keys_train: float) -> float:
    """sqrt(log N / log N_train) for N keys now and N_train keys at the training resolution (Jin et al. 2023)."""
    if n_keys <= 1 or n_keys_train <= 1:
        return 1.0
    return math.sqrt(math.log(n_keys) / math.log(n_keys_train))


def keys_at_training_size(site: Site, train_pixels: float) -> float:
    """The number of keys ``site`` would attend at ``train_pixels`` (image keys scale with area; text keys don't)."""
    layout = site.layout
    if layout.img_k is None or not layout.pixel_area:
        return float(layout.n_k)
    n_img = len(layout.img_k)
    return layout.n_k - n_img + n_img * train_pixels / layout.pixel_area


def _fixed(effect: "Temperature", site: Site) -> float:
    return effect.scale


def _resolution(effect: "Temperature", site: Site) -> float:
    if site.kind == CROSS:
        return effect.scale
    return effect.scale * entropy_scale(site.layout.n_k, keys_at_training_size(site, effect.train_pixels))


MODES: dict[str, Callable[["Temperature", Site], float]] = {"fixed": _fixed, "resolution": _resolution}


class Temperature(Effect):
    """Multiply attention logits by ``scale`` ("fixed"), or by ``scale`` times the entropy-preserving factor of
    each site ("resolution")."""

    node_id = "AttnLabTemperature"

    def __init__(self, schedule: Schedule, scale: float = 1.0, mode: str = "fixed", train_pixels: float = 512 * 512):
        super().__init__(schedule)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
        self.scale, self.mode, self.train_pixels = float(scale), mode, float(train_pixels)

    @property
    def neutral(self) -> bool:
        return self.mode == "fixed" and self.scale == 1.0

    def site_scale(self, site: Site) -> float:
        return MODES[self.mode](self, site)

    def pre(self, call: AttnCall, site: Site) -> AttnCall:
        scale = self.site_scale(site)
        if scale == 1.0:
            return call
        items = self.schedule.items(site)
        factor = per_item(call.q.new_full((call.q.shape[0], 1, 1, 1), scale), items, 1.0) if items else scale
        return call.with_(q=scale_logits(call.q, factor))

    def settings(self) -> str:
        if self.mode == "fixed":
            return f"scale={self.scale:g}"
        return f"scale={self.scale:g} x sqrt(log N / log N_train), N_train at {self.train_pixels:.0f} px area"
