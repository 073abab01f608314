"""Tiny, seeded, random-weight models built from the host's own model classes, one per family the engine
reaches, plus a tiny SD1 CLIP and VAE. For tests, benchmarks and the runner's smoke mode: they check that the
maths and the wiring are right, never that an image looks good.

Every builder returns a ``TinyModel``: the ModelPatcher, a latent maker and a conditioning maker whose context
width matches the model. Import has no side effects; call ``tools.hostenv.bootstrap()`` first. All nine families
build on the pinned host (0.3.64).

family         host class (model type)  latent b x ...  context  attention blocks, heads x head_dim
sd15           SD15 (EPS)               4x16x16         64       input 1, 3; middle 0; output 0-3; 8x4, 8x8
sd2            SD20 (EPS)               4x16x16         64       input 1, 3; middle 0; output 0-3; 1x64, 2x64
sdxl           SDXL (EPS)               4x16x16         64       input 3, output 0, 1 (depth 2); middle 0; 2x64
sd3            SD3 MMDiT (flow)         16x8x8          48       joint_blocks 0, 1 (+ x_block self-attn in 0); 2x64
flux           Flux (flow)              16x8x8          48       double_blocks 0, 1; single_blocks 0, 1; 4x16
wan21          WAN21_T2V (flow)         16x3x8x8        48       blocks 0, 1 (self + cross); 4x16
hunyuan_video  HunyuanVideo (flow)      16x3x8x8        48       double 0, 1; single 0, 1; token refiner 0, 1; 4x16
ltxv           LTXV (flow)              32x3x8x8        48       transformer_blocks 0, 1 (self + cross); 4x16
qwen_image     QwenImage (flow)         16x1x8x8        48       transformer_blocks 0, 1 (joint); 4x16
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

log = logging.getLogger("attnlab.tiny")


def init_weights_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Fill every parameter from ``seed`` (host layers are allocated with torch.empty): norms 1/0, rest N(0, std)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            is_norm = "norm" in type(m).__name__.lower()
            for name, p in m.named_parameters(recurse=False):
                if is_norm:
                    p.fill_(1.0 if name in ("weight", "scale") else 0.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return module


def _no_extras(batch: int, length: int, g: torch.Generator, padding: int) -> dict:
    return {}


@dataclass
class TinyModel:
    family: str
    patcher: object
    latent_shape: tuple  # without the batch dimension
    context_dim: int
    text_length: int = 7  # default number of text tokens in conditioning()
    extras: Callable[[int, int, torch.Generator, int], dict] = field(default=_no_extras)

    def latent(self, batch: int = 1) -> torch.Tensor:
        """b c h w (or b c t h w) zeros."""
        return torch.zeros((batch, *self.latent_shape))

    def conditioning(self, batch: int = 1, length: int | None = None, seed: int = 0, negative: bool = False,
                     padding: int = 0) -> list:
        """A host CONDITIONING list [[context b t c, extras]]; ``padding`` masks the last tokens where the family
        takes a text attention_mask (hunyuan_video, ltxv)."""
        g = torch.Generator().manual_seed(seed + (1000 if negative else 0))
        length = length or self.text_length
        context = torch.randn(batch, length, self.context_dim, generator=g)
        return [[context, self.extras(batch, length, g, padding)]]


def patcher_from_config(config_cls, config: dict, seed: int):
    """A ModelPatcher around config_cls(config).get_model() in float32 with weights filled from ``seed``."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = config_cls({**config, "dtype": torch.float32})
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_weights_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


# -- conditioning extras ----------------------------------------------------------------------------------------
def _pooled(dim: int, **more):
    """extras with a seeded pooled_output (b dim) plus constant keys (guidance, SDXL sizes, ...)."""
    def extras(batch, length, g, padding):
        return {"pooled_output": torch.randn(batch, dim, generator=g), **more}
    return extras


def _text_mask(batch: int, length: int, padding: int) -> torch.Tensor:
    """b t long mask: 1 keeps a token, 0 masks it (the last ``padding`` tokens)."""
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[:, length - padding:length] = 0
    return mask


def _ltxv_extras(batch, length, g, padding):
    # The host's LTXV text encoder (T5, attention masks on) always sends the mask.
    return {"attention_mask": _text_mask(batch, length, padding)}


def _hunyuan_extras(dim: int, guidance: float):
    base = _pooled(dim, guidance=guidance)

    def extras(batch, length, g, padding):
        # The host's Hunyuan text encoder drops an all-ones mask, so only padded text carries one.
        mask = {"attention_mask": _text_mask(batch, length, padding)} if padding else {}
        return {**base(batch, length, g, padding), **mask}
    return extras


# -- builders, one per family -------------------------------------------------------------------------------------
_UNET_BASE = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "in_channels": 4, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
              "use_temporal_attention": False, "use_temporal_resblock": False}
_UNET_ONE_DEEP = {"transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
                  "transformer_depth_middle": 1, "adm_in_channels": None}


def _sd15(seed):
    import comfy.supported_models as sm
    # SD15: 2 levels (32, 64 ch), SD15 forces 8 heads; attention at every level (7 transformer blocks).
    config = {**_UNET_BASE, **_UNET_ONE_DEEP, "model_channels": 32, "use_linear_in_transformer": False,
              "context_dim": 64}
    return TinyModel("sd15", patcher_from_config(sm.SD15, config, seed), (4, 16, 16), 64)


def _sd2(seed):
    import comfy.supported_models as sm
    # SD20 forces 64-channel heads: 64 model channels give 1 head, then 2. EPS (v needs real weights to detect).
    config = {**_UNET_BASE, **_UNET_ONE_DEEP, "model_channels": 64, "use_linear_in_transformer": True,
              "context_dim": 64}
    return TinyModel("sd2", patcher_from_config(sm.SD20, config, seed), (4, 16, 16), 64)


# What CLIPTextEncodeSDXL adds for a 128 px image (the tiny 16x16 latent).
_SDXL_SIZES = {"width": 128, "height": 128, "crop_w": 0, "crop_h": 0, "target_width": 128, "target_height": 128}


def _sdxl(seed):
    import comfy.supported_models as sm
    # SDXL: no attention at level 0, depth 2 at level 1 (as SDXL's [0, 2, 10]); 64-channel heads.
    # ADM = pooled (32) + 6 size embeddings of 256 (height, width, crop_h, crop_w, target_height, target_width).
    config = {**_UNET_BASE, "adm_in_channels": 32 + 6 * 256, "num_classes": "sequential", "model_channels": 64,
              "transformer_depth": [0, 2], "transformer_depth_output": [0, 0, 2, 2],
              "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 64}
    return TinyModel("sdxl", patcher_from_config(sm.SDXL, config, seed), (4, 16, 16), 64,
                     extras=_pooled(32, **_SDXL_SIZES))


def _fill_sd3_pos_embed_(patcher) -> None:
    """The MMDiT pos_embed buffer is torch.empty; real checkpoints hold the 2-D sin-cos table, so write that."""
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

    dm = patcher.model.diffusion_model
    table = get_2d_sincos_pos_embed(dm.hidden_size, dm.pos_embed_max_size)
    with torch.no_grad():
        dm.pos_embed.copy_(torch.from_numpy(table).to(dm.pos_embed.dtype).unsqueeze(0))


def _sd3(seed, context_dim=48, pooled_dim=32):
    import comfy.supported_models as sm
    # SD3 MMDiT: hidden = 64 x depth (128), heads = depth (2); SD3.5M-style extra self-attention in block 0.
    config = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "adm_in_channels": pooled_dim,
              "pos_embed_scaling_factor": None, "pos_embed_max_size": 64, "num_patches": 64 * 64,
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": context_dim, "out_features": 128}},
              "x_block_self_attn_layers": [0], "qk_norm": "rms"}
    patcher = patcher_from_config(sm.SD3, config, seed)
    _fill_sd3_pos_embed_(patcher)
    return TinyModel("sd3", patcher, (16, 8, 8), context_dim, extras=_pooled(pooled_dim))


def _flux(seed, context_dim=48, pooled_dim=32):
    import comfy.supported_models as sm
    # Flux (dev-style, guidance embedding): hidden 64, 4 heads of 16 = sum(axes_dim); 2 double + 2 single.
    config = {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
              "patch_size": 2, "vec_in_dim": pooled_dim, "context_in_dim": context_dim, "hidden_size": 64,
              "mlp_ratio": 2.0, "num_heads": 4, "depth": 2, "depth_single_blocks": 2, "axes_dim": [4, 6, 6],
              "theta": 10000, "qkv_bias": True}
    return TinyModel("flux", patcher_from_config(sm.Flux, config, seed), (16, 8, 8), context_dim,
                     extras=_pooled(pooled_dim, guidance=3.5))


def _wan21(seed, context_dim=48):
    import comfy.supported_models as sm
    # WAN21_T2V: dim 64, 4 heads of 16, 2 blocks (self-attention, cross-attention, FFN each); patch 1x2x2.
    config = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 16,
              "in_dim": 16, "dim": 64, "ffn_dim": 128, "freq_dim": 32, "text_dim": context_dim, "out_dim": 16,
              "num_heads": 4, "num_layers": 2, "window_size": (-1, -1), "qk_norm": True,
              "cross_attn_norm": True, "eps": 1e-6}
    return TinyModel("wan21", patcher_from_config(sm.WAN21_T2V, config, seed), (16, 3, 8, 8), context_dim)


def _hunyuan_video(seed):
    import comfy.supported_models as sm
    # HunyuanVideo: hidden 64, 4 heads of 16 = sum(axes_dim); 2 double + 2 single (Flux blocks, img before txt);
    # the text token refiner (2 blocks) is fixed by the host.
    config = {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
              "context_in_dim": 48, "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 4, "depth": 2,
              "depth_single_blocks": 2, "axes_dim": [4, 6, 6], "theta": 256, "patch_size": [1, 2, 2],
              "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False}
    return TinyModel("hunyuan_video", patcher_from_config(sm.HunyuanVideo, config, seed), (16, 3, 8, 8), 48,
                     extras=_hunyuan_extras(32, guidance=6.0))


def _ltxv(seed):
    import comfy.supported_models as sm
    # LTXV: 4 heads of 16 (inner 64), 2 blocks (self-attention, cross-attention); patch 1x1x1, 32 latent channels;
    # caption_channels is the text width, cross_attention_dim the projected one.
    config = {"image_model": "ltxv", "in_channels": 32, "cross_attention_dim": 64, "attention_head_dim": 16,
              "num_attention_heads": 4, "caption_channels": 48, "num_layers": 2}
    return TinyModel("ltxv", patcher_from_config(sm.LTXV, config, seed), (32, 3, 8, 8), 48, extras=_ltxv_extras)


def _qwen_image(seed):
    import comfy.supported_models as sm
    # QwenImage: 4 heads of 16 (inner 64), 2 joint blocks (txt before img); in_channels = 16 x patch 2x2.
    config = {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
              "num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 4, "joint_attention_dim": 48,
              "axes_dims_rope": (4, 6, 6)}
    return TinyModel("qwen_image", patcher_from_config(sm.QwenImage, config, seed), (16, 1, 8, 8), 48)


FAMILIES: dict[str, Callable[[int], TinyModel]] = {
    "sd15": _sd15, "sd2": _sd2, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "wan21": _wan21,
    "hunyuan_video": _hunyuan_video, "ltxv": _ltxv, "qwen_image": _qwen_image,
}
FAMILY_NAMES = tuple(FAMILIES)


def build(family: str, seed: int = 0) -> TinyModel:
    """A tiny model of ``family`` (one of FAMILY_NAMES) with weights from ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family '{family}'; known: {', '.join(FAMILY_NAMES)}")
    tiny = FAMILIES[family](seed)
    log.debug("built tiny %s (seed %d), latent %s", family, seed, tiny.latent_shape)
    return tiny


def sample(patcher, tiny: TinyModel, steps: int = 3, cfg: float = 4.0, seed: int = 0, sampler: str = "euler",
           scheduler: str = "normal", positive=None, negative=None, latent=None) -> torch.Tensor:
    """Sample ``patcher`` with the host's real sampler; latent b c (t) h w in, same shape out."""
    import comfy.sample

    latent = tiny.latent() if latent is None else latent
    positive = positive or tiny.conditioning(latent.shape[0], seed=seed)
    negative = negative or tiny.conditioning(latent.shape[0], seed=seed, negative=True)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               seed=seed, disable_pbar=True)


# -- text encoder and VAE -----------------------------------------------------------------------------------------
def tiny_sd1_clip(seed: int = 0):
    """A comfy.sd.CLIP with the SD1 tokenizer the host ships and a 2-layer, 64-wide text model: (b, 77, 64)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": {
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2,
        "projection_dim": 64}})
    init_weights_(clip.cond_stage_model, seed)
    return clip


def tiny_controlnet(tiny: TinyModel, seed: int = 1):
    """A comfy.controlnet.ControlNet for a tiny UNet model: the host's ControlNet class with the UNet's config
    (hint: b h w 3 images at 8x the latent size)."""
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops
    from comfy.cldm.cldm import ControlNet

    skip = {"out_channels", "dtype", "image_model", "use_temporal_attention", "use_temporal_resblock"}
    config = {k: v for k, v in tiny.patcher.model.model_config.unet_config.items() if k not in skip}
    net = ControlNet(hint_channels=3, dtype=torch.float32, operations=comfy.ops.disable_weight_init, **config)
    init_weights_(net, seed)
    return comfy.controlnet.ControlNet(net, load_device=mm.get_torch_device())


class FramewiseAutoencoder(torch.nn.Module):
    """Wraps an image autoencoder for video latents b c t h w by folding frames into the batch (smoke runs only:
    no temporal compression)."""

    def __init__(self, image_autoencoder: torch.nn.Module):
        super().__init__()
        self.inner = image_autoencoder

    @staticmethod
    def _framewise(fn, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = fn(x.movedim(2, 1).reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]).movedim(1, 2)

    def decode(self, z, **kwargs):
        return self._framewise(self.inner.decode, z)

    def encode(self, x, **kwargs):
        return self._framewise(self.inner.encode, x)


def tiny_video_vae(seed: int = 0, latent_channels: int = 16):
    """A comfy.sd.VAE for b c t h w latents: the tiny image VAE applied frame by frame."""
    vae = tiny_sd_vae(seed, latent_channels)
    vae.first_stage_model = FramewiseAutoencoder(vae.first_stage_model)
    vae.latent_dim = 3
    return vae


def tiny_sd_vae(seed: int = 0, latent_channels: int = 4):
    """A comfy.sd.VAE with a tiny AutoencoderKL: ``latent_channels`` latent channels, 8x downscale."""
    import comfy.ldm.models.autoencoder as ae
    import comfy.sd

    ddconfig = {"double_z": True, "z_channels": latent_channels, "resolution": 64, "in_channels": 3, "out_ch": 3,
                "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    # Built once to fill, then handed to VAE as a state dict (VAE builds its own copy from the config).
    model = ae.AutoencoderKL(ddconfig=ddconfig, embed_dim=latent_channels)
    init_weights_(model, seed)
    vae = comfy.sd.VAE(sd=model.state_dict(), config={"params": {"ddconfig": ddconfig, "embed_dim": latent_channels}})
    vae.latent_channels = latent_channels
    return vae


# family -> (model builder taking the tiny SD1 CLIP's widths, VAE builder)
BUNDLES = {"sd15": (lambda seed: build("sd15", seed), lambda seed: tiny_sd_vae(seed, 4)),
           "sd3": (lambda seed: _sd3(seed, context_dim=64, pooled_dim=64), lambda seed: tiny_sd_vae(seed, 16)),
           "flux": (lambda seed: _flux(seed, context_dim=64, pooled_dim=64), lambda seed: tiny_sd_vae(seed, 16)),
           "wan21": (lambda seed: _wan21(seed, context_dim=64), lambda seed: tiny_video_vae(seed, 16))}


def tiny_bundle(family: str = "sd15", seed: int = 0):
    """(ModelPatcher, CLIP, VAE) that work together in a CLIPTextEncode -> KSampler -> VAEDecode graph."""
    if family not in BUNDLES:
        raise ValueError(f"no tiny bundle for '{family}'; known: {', '.join(BUNDLES)}")
    make_model, make_vae = BUNDLES[family]
    return make_model(seed).patcher, tiny_sd1_clip(seed), make_vae(seed)


def tiny_sd15_bundle(seed: int = 0):
    """(ModelPatcher, CLIP, VAE) of the tiny SD1.5: context 64 = the CLIP's width, 4-channel 8x VAE."""
    return tiny_bundle("sd15", seed)
