"""The model families Attention Lab reaches, and how their attention sites are addressed.

A registry, keyed by the host's model-config class names (subclasses such as FluxSchnell or WAN21_I2V
resolve through the class hierarchy). Adding a family is adding an entry here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..attention.site import CROSS, JOINT, SELF

UNET, DIT = "unet", "dit"


@dataclass(frozen=True)
class DitGroup:
    """One list of DiT blocks: the host's block-replace kind, our address group, the module list attribute,
    and the attention kinds of the calls inside one block, in call order (the last repeats)."""

    replace_kind: str
    group: str
    modules: str
    call_kinds: tuple[str, ...]

    def kind_at(self, call_index: int) -> str:
        """The attention kind of the block's ``call_index``-th attention call."""
        return self.call_kinds[min(call_index, len(self.call_kinds) - 1)]


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    arch: str
    configs: tuple[str, ...]
    train_pixels: int  # width x height the family was trained at (resolution-aware effects)
    vae_scale: int = 8
    patch: tuple[int, int, int] = (1, 1, 1)
    dit_groups: tuple[DitGroup, ...] = ()
    txt_first: bool = True  # joint sequence order on host 0.3.64
    native_groups: dict = field(default_factory=dict)  # host's block_type -> our group (newer hosts)
    context_key: tuple[str, ...] = ("context_dim",)  # path in the unet config to the text context width
    vae_temporal: int = 1  # pixel frames per latent frame (video VAEs)
    repeatable_context: bool = False  # text is only attended by cross-attention: a repeated context is exact

    @property
    def kinds(self) -> tuple[str, ...]:
        if self.arch == UNET:
            return (SELF, CROSS)
        return tuple(dict.fromkeys(k for g in self.dit_groups for k in g.call_kinds))

    def context_dim(self, unet_config: dict) -> int | None:
        """Width of the text context the model takes (what a CONDITIONING's last axis must be)."""
        value = unet_config
        for key in self.context_key:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return int(value)

    def joint_txt_first(self, transformer_options: dict) -> bool:
        return self.txt_first


@dataclass(frozen=True)
class HunyuanFamily(Family):
    def joint_txt_first(self, transformer_options: dict) -> bool:
        # Host 0.3.64 puts image tokens first; newer hosts (which publish block_type) put text first.
        return "block_type" in transformer_options or self.txt_first


_FLUX_GROUPS = (DitGroup("double_block", "double", "double_blocks", (JOINT,)),
                DitGroup("single_block", "single", "single_blocks", (JOINT,)))

FAMILIES: tuple[Family, ...] = (
    Family("sd15", "SD1.5", UNET, ("SD15",), 512 * 512),
    Family("sd2", "SD2", UNET, ("SD20",), 768 * 768),
    Family("sdxl", "SDXL", UNET, ("SDXL", "SDXLRefiner"), 1024 * 1024),
    Family("sd3", "SD3 / SD3.5", DIT, ("SD3",), 1024 * 1024, patch=(1, 2, 2),
           dit_groups=(DitGroup("double_block", "block", "joint_blocks", (JOINT, SELF)),),
           context_key=("context_embedder_config", "params", "in_features")),
    Family("flux", "Flux", DIT, ("Flux",), 1024 * 1024, patch=(1, 2, 2), dit_groups=_FLUX_GROUPS,
           native_groups={"double": "double", "single": "single"}, context_key=("context_in_dim",)),
    Family("wan21", "WAN 2.1 / 2.2", DIT, ("WAN21_T2V",), 832 * 480, patch=(1, 2, 2),
           dit_groups=(DitGroup("double_block", "block", "blocks", (SELF, CROSS, CROSS)),),
           native_groups={"double": "block"}, context_key=("text_dim",), vae_temporal=4,
           repeatable_context=True),
    HunyuanFamily("hunyuan_video", "HunyuanVideo", DIT, ("HunyuanVideo",), 720 * 1280, patch=(1, 2, 2),
                  dit_groups=_FLUX_GROUPS, txt_first=False, native_groups={"double": "double", "single": "single"},
                  context_key=("context_in_dim",), vae_temporal=4),
    Family("ltxv", "LTXV", DIT, ("LTXV",), 768 * 512, vae_scale=32,
           dit_groups=(DitGroup("double_block", "block", "transformer_blocks", (SELF, CROSS)),),
           context_key=("caption_channels",), vae_temporal=8),
    Family("qwen_image", "Qwen-Image", DIT, ("QwenImage",), 1328 * 1328, patch=(1, 2, 2),
           dit_groups=(DitGroup("double_block", "block", "transformer_blocks", (JOINT,)),),
           native_groups={"double": "block"}, context_key=("joint_attention_dim",)),
)

_BY_CONFIG = {config: family for family in FAMILIES for config in family.configs}
BY_NAME = {family.name: family for family in FAMILIES}


def family_of_config(model_config) -> Family | None:
    """The family for a host model-config object, looked up along its class hierarchy; None if unknown."""
    for cls in type(model_config).__mro__:
        if cls.__name__ in _BY_CONFIG:
            return _BY_CONFIG[cls.__name__]
    return None


def supported_labels() -> str:
    return ", ".join(f.label for f in FAMILIES)
