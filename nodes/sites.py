"""Static list of a model's attention sites (read from its module structure; nothing runs).

Used to check ``blocks`` selectors against the model at node time and by AttnLabInspect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..attention.address import BlockAddress
from ..attention.site import CROSS, SELF
from .families import UNET, Family


@dataclass(frozen=True)
class SiteInfo:
    address: BlockAddress
    kinds: tuple[str, ...]
    heads: int
    head_dim: int
    image_tokens: int | None  # for the latent size asked about; None if unknown
    text_tokens: bool  # whether text tokens join (joint) or are attended (cross)


def _heads(module) -> tuple[int, int]:
    """(heads, head_dim) of the first attention module found inside ``module``."""
    for sub in module.modules():
        heads = getattr(sub, "heads", None) or getattr(sub, "num_heads", None)
        if isinstance(heads, int) and heads > 0:
            dim = getattr(sub, "dim_head", None) or getattr(sub, "head_dim", None)
            if not isinstance(dim, int):
                dim = getattr(sub, "hidden_size", 0) // heads
            return heads, dim
    return 0, 0


def _transformers(block):
    return [m for m in block if type(m).__name__ == "SpatialTransformer"]


def _unet_levels(dm) -> list[tuple[str, int, object, int]]:
    """(group, index, block, downsampling level) for every UNet block, in forward order."""
    out, level = [], 0
    for i, block in enumerate(dm.input_blocks):
        names = {type(m).__name__ for m in block}
        level += "Downsample" in names
        out.append(("input", i, block, level))
    out.append(("middle", 0, dm.middle_block, level))
    for i, block in enumerate(dm.output_blocks):
        out.append(("output", i, block, level))
        level -= "Upsample" in {type(m).__name__ for m in block}
    return out


def _unet_sites(dm, latent_hw) -> list[SiteInfo]:
    sites = []
    for group, index, block, level in _unet_levels(dm):
        tokens = math.prod(math.ceil(s / 2 ** level) for s in latent_hw) if latent_hw else None
        for st in _transformers(block):
            for depth, tb in enumerate(st.transformer_blocks):
                heads, dim = _heads(tb.attn1)
                sites.append(SiteInfo(BlockAddress(group, index, depth), (SELF, CROSS), heads, dim, tokens, True))
    return sites


def _dit_sites(dm, family: Family, latent_shape) -> list[SiteInfo]:
    tokens = None
    if latent_shape:
        frames = latent_shape[2] if len(latent_shape) == 5 else 1
        pt, ph, pw = family.patch
        tokens = math.ceil(frames / pt) * math.ceil(latent_shape[-2] / ph) * math.ceil(latent_shape[-1] / pw)
    sites = []
    for group in family.dit_groups:
        for i, block in enumerate(getattr(dm, group.modules, [])):
            heads, dim = _heads(block)
            kinds = tuple(dict.fromkeys(group.call_kinds))
            sites.append(SiteInfo(BlockAddress(group.group, i), kinds, heads, dim, tokens, True))
    return sites


def model_sites(model, family: Family, latent_shape=None) -> list[SiteInfo]:
    """Every attention site of ``model`` (a ModelPatcher); token counts for ``latent_shape`` if given."""
    dm = model.model.diffusion_model
    if family.arch == UNET:
        return _unet_sites(dm, tuple(latent_shape[-2:]) if latent_shape else None)
    return _dit_sites(dm, family, latent_shape)


def model_addresses(model, family: Family) -> list[BlockAddress]:
    return [s.address for s in model_sites(model, family)]
