"""AttnLabToyModel: the pack's own small text-to-image model (MODEL, CLIP, VAE), built from the host's classes.

An SD1.x-style UNet (self- and cross-attention at 16x16 and 8x8 latents), a 2-layer CLIP-style text encoder using
the SD1 tokenizer the host ships, and a small AutoencoderKL (64x64 images, 4x16x16 latents). It was trained by
``tools/train_toy.py`` on the synthetic shapes world of ``toy/world.py`` and draws what that world holds:
"a red circle on the left and a blue square on the right".
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from comfy_api.latest import io

from .errors import node_error

log = logging.getLogger("attnlab.toy")

NODE_ID = "AttnLabToyModel"
WEIGHTS = Path(__file__).resolve().parent.parent / "toy" / "weights"
FILES = {"unet": "toy_unet.safetensors", "clip": "toy_clip.safetensors", "vae": "toy_vae.safetensors"}
TEXT_WIDTH = 64
HEAD_CHANNELS = 16  # SD15 would force 8 heads (4 channels each at this width)
UNET_CONFIG = {"use_checkpoint": False, "image_size": 16, "in_channels": 4, "out_channels": 4, "model_channels": 32,
               "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 2], "transformer_depth": [1, 1, 1],
               "transformer_depth_output": [1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
               "use_spatial_transformer": True, "use_linear_in_transformer": True, "legacy": False,
               "context_dim": TEXT_WIDTH, "adm_in_channels": None, "use_temporal_attention": False,
               "use_temporal_resblock": False}
CLIP_CONFIG = {"hidden_size": TEXT_WIDTH, "intermediate_size": 4 * TEXT_WIDTH, "num_attention_heads": 4,
               "num_hidden_layers": 2, "projection_dim": TEXT_WIDTH}
LATENT_CHANNELS = 4
VAE_SCALE = 4  # pixels per latent cell
VAE_DDCONFIG = {"double_z": True, "z_channels": LATENT_CHANNELS, "resolution": 64, "in_channels": 3, "out_ch": 3,
                "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def reset_parameters_(module: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's default initialisation for every layer (the host allocates weights with torch.empty)."""
    for m in module.modules():
        for klass in type(m).__mro__:
            if klass.__module__.startswith("torch.nn") and "reset_parameters" in klass.__dict__:
                klass.reset_parameters(m)
                break
    return module


def build_unet(state_dict: dict | None = None):
    """A ModelPatcher around the host's SD15 model class with the toy UNet config (float32)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = sm.SD15({**UNET_CONFIG, "dtype": torch.float32})
    config.unet_config.update(num_heads=-1, num_head_channels=HEAD_CHANNELS)
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    if state_dict is None:
        reset_parameters_(model.diffusion_model)
    else:
        model.diffusion_model.load_state_dict(state_dict)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def build_clip(state_dict: dict | None = None):
    """A comfy.sd.CLIP: the SD1 tokenizer and SD1 CLIP classes with the toy text model config."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": CLIP_CONFIG,
                                                          "dtype": torch.float32})
    if state_dict is None:
        reset_parameters_(clip.cond_stage_model)
    else:
        clip.cond_stage_model.load_state_dict(state_dict, strict=True)
    return clip


def vae_config() -> dict:
    return {"params": {"ddconfig": VAE_DDCONFIG, "embed_dim": LATENT_CHANNELS}}


def build_vae(state_dict: dict | None = None):
    """A comfy.sd.VAE around the host's AutoencoderKL with the toy config (4x downscale)."""
    import comfy.ldm.models.autoencoder as ae
    import comfy.sd

    if state_dict is None:
        state_dict = reset_parameters_(ae.AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=LATENT_CHANNELS)).state_dict()
    vae = comfy.sd.VAE(sd=state_dict, config=vae_config())
    vae.downscale_ratio = vae.upscale_ratio = VAE_SCALE
    vae.latent_channels = LATENT_CHANNELS
    return vae


def weight_files(folder: Path = WEIGHTS) -> dict:
    """part -> path of the toy model's safetensors files; a clear error when one is missing."""
    paths = {part: folder / name for part, name in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise node_error(NODE_ID, "weights", f"missing {', '.join(missing)}",
                         "reinstall the pack, or train them with 'python -m tools.train_toy'")
    return paths


def load_toy(folder: Path = WEIGHTS):
    """(ModelPatcher, CLIP, VAE) of the trained toy model."""
    import comfy.utils

    paths = weight_files(folder)
    parts = {part: comfy.utils.load_torch_file(str(path), safe_load=True) for part, path in paths.items()}
    return build_unet(parts["unet"]), build_clip(parts["clip"]), build_vae(parts["vae"])


class AttnLabToyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_ID,
            display_name="Attention Lab Toy Model",
            category="attention_lab/testing",
            description="Loads the pack's own tiny text-to-image model (about 10 MB of weights, trained by the "
                        "pack on a synthetic world of flat shapes). It draws 64x64 images of circles, squares, triangles "
                        "and stars in red, green, blue, yellow, purple and orange, on the left, right, top, "
                        "bottom or in the centre: prompt it like 'a red circle on the left and a blue square on "
                        "the right', with an Empty Latent Image of 128x128 (its 16x16 latent decodes to a "
                        "64x64 image). For trying effects without "
                        "downloading a checkpoint; not an art model.",
            inputs=[],
            outputs=[io.Model.Output(tooltip="The toy UNet (SD1.x-style: self- and cross-attention at 16x16 and "
                                             "8x8 latents)."),
                     io.Clip.Output(tooltip="The toy text encoder (SD1 tokenizer, 2 layers, 64 wide)."),
                     io.Vae.Output(tooltip="The toy VAE (64x64 images <-> 4x16x16 latents).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*load_toy())
