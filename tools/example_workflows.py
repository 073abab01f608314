"""The example workflows in workflows/, authored in code: `python -m tools.example_workflows` rewrites them.

A host-tier test checks that the files equal what this writes, so examples cannot drift from the nodes.
"""
from __future__ import annotations

import logging
from typing import Callable

from tools import hostenv
from tools.workflow_builder import Graph

WORKFLOWS = hostenv.PACK_ROOT / "workflows"
SAMPLER = ["euler", "normal", 1.0]


def _text_to_image(g: Graph, checkpoint: str, prompt: str, negative: str, latent_node: str, size: int):
    ckpt = g.add("CheckpointLoaderSimple", [checkpoint], title="Load Checkpoint", column=0)
    pos = g.add("CLIPTextEncode", [prompt], title="Positive", clip=(ckpt, 1))
    neg = g.add("CLIPTextEncode", [negative], title="Negative", clip=(ckpt, 1))
    latent = g.add(latent_node, [size, size, 1], column=1)
    return ckpt, pos, neg, latent


def _sample_and_save(g: Graph, model, pos, neg, latent, vae, prefix: str, steps: int, cfg: float, title: str):
    sampler = g.add("KSampler", [42, "fixed", steps, cfg, *SAMPLER], title=title, model=model, positive=pos,
                    negative=neg, latent_image=latent)
    image = g.add("VAEDecode", samples=(sampler, 0), vae=vae)
    g.add("SaveImage", [prefix], images=(image, 0))


def _flux_loaders(g: Graph):
    """Flux dev's model, its two text encoders and its VAE, as users load them."""
    unet = g.add("UNETLoader", ["flux1-dev.safetensors", "default"], title="Load Flux", column=0)
    clip = g.add("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], column=0)
    vae = g.add("VAELoader", ["ae.safetensors"], column=0)
    return unet, clip, vae


def temperature_sd15(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "v1-5-pruned-emaonly.safetensors", "a lighthouse on a rocky cliff at sunset, crashing waves, detailed",
        "blurry, lowres, duplicated, tiled", "EmptyLatentImage", 1024)
    temp = g.add("AttnLabTemperature", [1.0, "resolution", 512, 0.0, 1.0, "", "self", "both"], model=(ckpt, 0))
    g.add("AttnLabInspect", model=(temp, 0), latent=(latent, 0))
    _sample_and_save(g, (ckpt, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_plain", 20, 7.0,
                     "KSampler (plain)")
    _sample_and_save(g, (temp, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_temperature", 20, 7.0,
                     "KSampler (temperature)")
    g.note("## Attention temperature at high resolution\n\nSD1.5 was trained at 512x512. At 1024x1024 each "
           "self-attention spreads over 4x the keys and its entropy rises: repeated, tiled subjects. "
           "**AttnLabTemperature** in `resolution` mode multiplies the self-attention logits at every site by "
           "sqrt(log N / log N_train) (Jin et al. 2023), restoring the entropy of the training size.\n\nBoth samplers "
           "share the seed: compare `attnlab_plain` with `attnlab_temperature`. **AttnLabInspect** lists the "
           "model's attention sites and the stack.")


def guidance_pag_seg_sdxl(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "sd_xl_base_1.0.safetensors", "a portrait of an old fisherman, weathered face, knitted cap, soft light",
        "blurry, deformed, lowres", "EmptyLatentImage", 1024)
    pag = g.add("AttnLabPAG", [3.0, 0.0, 0.0, 1.0, "", "all"], model=(ckpt, 0))
    seg = g.add("AttnLabSEG", [2.0, 0.0, 10.0, 0.0, 1.0, "", "all"], model=(pag, 0))
    _sample_and_save(g, (ckpt, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_cfg_only", 25, 5.0,
                     "KSampler (CFG only)")
    _sample_and_save(g, (seg, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_pag_seg", 25, 5.0,
                     "KSampler (CFG + PAG + SEG)")
    sag = g.add("AttnLabSAG", [0.5, 2.0, 0.0, 1.0, "", "all"], model=(ckpt, 0))
    _sample_and_save(g, (sag, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_sag", 25, 5.0,
                     "KSampler (CFG + SAG)")
    g.note("## PAG and SEG on SDXL, in one extra pass\n\n**AttnLabPAG** (identity self-attention) and "
           "**AttnLabSEG** (queries blurred over the image grid) each guide away from a perturbed prediction. "
           "Stacked, their perturbed predictions run as extra chunks of the same model call as cond and uncond, "
           "so two guidances cost one batch, not two passes. Empty `blocks` = the middle block, as core's PAG. "
           "The third branch uses **AttnLabSAG** (self-attention guidance, one extra pass).")


def slg_sd35(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors", "a hand holding a glass of water, studio photo",
        "blurry, extra fingers", "EmptySD3LatentImage", 1024)
    slg = g.add("AttnLabSkipLayerGuidance", [3.0, 0.0, 0.01, 0.15, "", "all"], model=(ckpt, 0))
    _sample_and_save(g, (slg, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_slg", 30, 4.5,
                     "KSampler (skip-layer guidance)")
    g.note("## Skip-layer guidance on SD3.5\n\n**AttnLabSkipLayerGuidance** guides away from a prediction whose "
           "selected blocks' attention is skipped, early in the schedule (1%-15%), which firms up anatomy. Empty "
           "`blocks` = the middle block; set e.g. `block.7-9` to choose.")


def nag_flux_cfg1(g: Graph) -> None:
    unet, clip, vae = _flux_loaders(g)
    pos = g.add("CLIPTextEncode", ["a cozy reading nook by a rainy window, warm lamp light"], title="Positive",
                clip=(clip, 0))
    neg = g.add("CLIPTextEncode", ["people, text, watermark, cartoon"], title="Negative (for NAG)", clip=(clip, 0))
    guided = g.add("FluxGuidance", [3.5], conditioning=(pos, 0))
    latent = g.add("EmptySD3LatentImage", [1024, 1024, 1], column=1)
    nag = g.add("AttnLabNAG", [5.0, 2.5, 0.25, 0.0, 1.0, "", "all"], model=(unet, 0), negative=(neg, 0))
    _sample_and_save(g, (nag, 0), (guided, 0), (neg, 0), (latent, 0), (vae, 0), "attnlab_nag", 20, 1.0,
                     "KSampler (cfg 1 + NAG)")
    g.note("## A negative prompt for Flux at cfg 1\n\nFlux dev is guidance-distilled and runs at cfg 1, where the "
           "sampler ignores the negative prompt. **AttnLabNAG** applies it inside attention instead (Normalized "
           "Attention Guidance): the prompt's attention output is pushed away from the negative's, norm-clipped and "
           "blended, in the same model call.")


def _wan_video(g: Graph, patch: Callable, title: str, prefix: str) -> None:
    """WAN 2.1 text to video, the model passed through ``patch(g, model) -> node`` before the sampler."""
    unet = g.add("UNETLoader", ["wan2.1_t2v_1.3B_fp16.safetensors", "default"], title="Load WAN 2.1", column=0)
    clip = g.add("CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"], column=0)
    vae = g.add("VAELoader", ["wan_2.1_vae.safetensors"], column=0)
    pos = g.add("CLIPTextEncode", ["a red fox trotting through fresh snow, morning light"], title="Positive",
                clip=(clip, 0))
    neg = g.add("CLIPTextEncode", ["static, blurry, deformed legs, extra limbs"], title="Negative", clip=(clip, 0))
    latent = g.add("EmptyHunyuanLatentVideo", [832, 480, 33, 1], column=1)
    sampler = g.add("KSampler", [42, "fixed", 30, 6.0, "uni_pc", "simple", 1.0], title=f"KSampler ({title})",
                    model=(patch(g, (unet, 0)), 0), positive=(pos, 0), negative=(neg, 0), latent_image=(latent, 0))
    frames = g.add("VAEDecode", samples=(sampler, 0), vae=(vae, 0))
    g.add("SaveAnimatedWEBP", [prefix, 16.0, False, 90, "default"], images=(frames, 0))


def slg_wan(g: Graph) -> None:
    _wan_video(g, lambda g, model: g.add("AttnLabSkipLayerGuidance", [3.0, 0.0, 0.1, 0.7, "", "all"], model=model),
               "SLG", "attnlab_slg_wan")
    g.note("## Skip-layer guidance on WAN 2.1\n\n**AttnLabSkipLayerGuidance** guides the video away from a prediction "
           "whose middle block skips its self-attention (set e.g. `block.9-10` to choose), for 10%-70% of the "
           "schedule: steadier anatomy and motion. "
           "It shares the sampler's own model call (no extra pass).")


def video_merge_wan(g: Graph) -> None:
    _wan_video(g, lambda g, model: g.add("AttnLabVideoMerge", [0.7, 2, "tokens", 0, "fixed", True, "1", 0.0, 1.0, "",
                                                               "all", "both"], model=model),
               "video merge", "attnlab_video_merge_wan")
    g.note("## Video token merging on WAN 2.1\n\n**AttnLabVideoMerge** (after VidToMe, Li et al. 2024) cuts the "
           "video's latent frames into windows of 2. In each window one frame, drawn at random, keeps all its "
           "tokens; 70% of the other frame's tokens merge into their most similar token of that frame before "
           "self-attention, and get its output back after. Each self-attention then attends about two thirds of "
           "the tokens (33 frames are 9 latent frames; the last window holds one and stays whole), under half "
           "the attention work, and the frames of a window keep one look: less flicker, at the "
           "cost of some fine motion. Lower `ratio` for more motion, raise `window` for more speed. Text "
           "(cross-attention) is never merged.")


TOKEN_PROMPT = "a cat wearing a tall red hat, sitting on a wooden chair, cozy living room, photo"


TOKEN_NOTE = ("## Token weights in attention\n\n**AttnLabTokenWeights** finds the named words' tokens in the prompt "
              "(with the CLIP you connect) and reweights the attention image tokens pay to them: `red hat:1.8` "
              "nearly doubles it (Prompt-to-Prompt's reweighting), `chair:0.5` halves it. Type the prompt exactly "
              "as in the positive CLIP Text Encode. `renormalise` mode is gentler (the other words give way).")


def _token_weights(g: Graph, model, clip, pos, neg, latent, vae, steps: int, cfg: float, note: str) -> None:
    weights = g.add("AttnLabTokenWeights", [TOKEN_PROMPT, "red hat:1.8, chair:0.5", "p2p", 0.0, 1.0, "", "all",
                                            "cond"], model=model, clip=clip)
    _sample_and_save(g, model, pos, neg, latent, vae, "attnlab_plain", steps, cfg, "KSampler (plain)")
    _sample_and_save(g, (weights, 0), pos, neg, latent, vae, "attnlab_token_weights", steps, cfg,
                     "KSampler (token weights)")
    g.note(TOKEN_NOTE + note)


def token_weights_sd15(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(g, "v1-5-pruned-emaonly.safetensors", TOKEN_PROMPT,
                                            "blurry, lowres, deformed", "EmptyLatentImage", 512)
    _token_weights(g, (ckpt, 0), (ckpt, 1), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), 20, 7.0,
                   " On SD1.5 the weights act in every UNet cross-attention.")


def token_weights_sdxl(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(g, "sd_xl_base_1.0.safetensors", TOKEN_PROMPT, "blurry, lowres",
                                            "EmptyLatentImage", 1024)
    _token_weights(g, (ckpt, 0), (ckpt, 1), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), 25, 6.0,
                   " On SDXL the words are found in both text encoders' tokens (CLIP-G and CLIP-L sit side by "
                   "side).")


def token_weights_flux(g: Graph) -> None:
    unet, clip, vae = _flux_loaders(g)
    pos = g.add("CLIPTextEncode", [TOKEN_PROMPT], title="Positive", clip=(clip, 0))
    guided = g.add("FluxGuidance", [3.5], conditioning=(pos, 0))
    neg = g.add("CLIPTextEncode", [""], title="Negative (unused at cfg 1)", clip=(clip, 0))
    latent = g.add("EmptySD3LatentImage", [1024, 1024, 1], column=1)
    _token_weights(g, (unet, 0), (clip, 0), (guided, 0), (neg, 0), (latent, 0), (vae, 0), 20, 1.0,
                   " On Flux the words are found among the T5 tokens, and only the image rows of joint attention "
                   "change (the text stream is left alone).")


def _half_masks(g: Graph, size: int):
    """Two MASKs from core nodes: the left and the right half of a size x size image."""
    empty = g.add("SolidMask", [0.0, size, size], title="Empty mask", column=0)
    half = g.add("SolidMask", [1.0, size // 2, size], title="Half mask", column=0)
    left = g.add("MaskComposite", [0, 0, "add"], title="Left half", destination=(empty, 0), source=(half, 0))
    right = g.add("MaskComposite", [size // 2, 0, "add"], title="Right half", destination=(empty, 0),
                  source=(half, 0))
    return left, right


def _regions(g: Graph, clip, size: int, prompts: tuple[str, str], base: str, model, mode: str, isolation: float):
    """Base prompt, two half-image regions and AttnLabRegionalPrompt -> (regional node, base encode, regions)."""
    left, right = _half_masks(g, size)
    base_enc = g.add("CLIPTextEncode", [base], title="Base prompt", clip=clip)
    regions = None
    for prompt, mask, side in zip(prompts, (left, right), ("left", "right")):
        enc = g.add("CLIPTextEncode", [prompt], title=f"Region prompt ({side})", clip=clip)
        links = {"conditioning": (enc, 0), "mask": (mask, 0)}
        if regions is not None:
            links["regions"] = (regions, 0)
        regions = g.add("AttnLabRegion", [1.0], title=f"Region ({side})", **links)
    node = g.add("AttnLabRegionalPrompt", [mode, isolation, 1.0, 0.0, 1.0, "", "all", "cond"], model=model,
                 conditioning=(base_enc, 0), regions=(regions, 0))
    return node, base_enc, regions


REGION_NOTE = ("The base prompt describes the whole picture; each **AttnLabRegion** pairs a prompt with a mask "
               "(here from core mask nodes; any MASK works, of any size). **AttnLabRegionalPrompt** joins the "
               "prompts into one conditioning and, inside attention, lets image tokens in a region see the base "
               "prompt and their region's prompt only: one model pass, prompts of any length. Sample with its "
               "conditioning output. ")


def regional_sd15(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "v1-5-pruned-emaonly.safetensors", "a golden retriever and a black cat sitting in a sunny park",
        "blurry, lowres, deformed", "EmptyLatentImage", 512)
    node, _, _ = _regions(g, (ckpt, 1), 512, ("a golden retriever", "a black cat"), "a sunny park, photo", (ckpt, 0),
                       "hard", 0.3)
    _sample_and_save(g, (ckpt, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_joint_prompt", 20, 7.0,
                     "KSampler (one joint prompt)")
    _sample_and_save(g, (node, 0), (node, 1), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_regions", 20, 7.0,
                     "KSampler (regions)")
    g.note("## Regional prompts on SD1.5\n\n" + REGION_NOTE + "`isolation` 0.3 keeps the two animals from "
           "blending in self-attention. Compare with the plain joint prompt, where attributes bleed.")


def regional_sdxl(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "sd_xl_base_1.0.safetensors", "a red vintage car next to a blue vintage car on a coastal road",
        "blurry, deformed, lowres", "EmptyLatentImage", 1024)
    hard, base, regions = _regions(g, (ckpt, 1), 1024, ("a red vintage car", "a blue vintage car"),
                       "two vintage cars on a coastal road, golden hour", (ckpt, 0), "hard", 0.0)
    dense = g.add("AttnLabRegionalPrompt", ["dense", 0.0, 1.0, 0.0, 1.0, "", "all", "cond"], model=(ckpt, 0),
                  conditioning=(base, 0), regions=(regions, 0))
    _sample_and_save(g, (ckpt, 0), (pos, 0), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_joint_prompt", 25, 6.0,
                     "KSampler (one joint prompt)")
    _sample_and_save(g, (hard, 0), (hard, 1), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_regions_hard", 25, 6.0,
                     "KSampler (hard regions)")
    _sample_and_save(g, (dense, 0), (dense, 1), (neg, 0), (latent, 0), (ckpt, 2), "attnlab_regions_dense", 25, 6.0,
                     "KSampler (DenseDiffusion regions)")
    g.note("## Regional prompts on SDXL: hard masks and DenseDiffusion\n\n" + REGION_NOTE + "The third branch uses "
           "`dense` mode (DenseDiffusion): soft modulation that is strongest early and fades, so the layout is "
           "set and details stay free. It computes attention maps explicitly, so it is slower than `hard`.")


def regional_flux(g: Graph) -> None:
    unet, clip, vae = _flux_loaders(g)
    neg = g.add("CLIPTextEncode", [""], title="Negative (unused at cfg 1)", clip=(clip, 0))
    latent = g.add("EmptySD3LatentImage", [1024, 1024, 1], column=1)
    node, _, _ = _regions(g, (clip, 0), 1024, ("an astronaut in a white suit", "a knight in shining armor"),
                       "two figures standing in a misty forest, cinematic", (unet, 0), "hard", 0.2)
    guided = g.add("FluxGuidance", [3.5], conditioning=(node, 1))
    _sample_and_save(g, (node, 0), (guided, 0), (neg, 0), (latent, 0), (vae, 0), "attnlab_regions_flux", 20, 1.0,
                     "KSampler (regions, cfg 1)")
    g.note("## Regional prompts on Flux\n\n" + REGION_NOTE + "In Flux's joint attention the text tokens of each "
           "region also see only their region's image tokens (after Chen et al. 2024, training-free regional "
           "prompting for DiTs). Apply FluxGuidance to the regional conditioning.")


def _speed_pair(g: Graph, ckpt, patched, pos, neg, latent, prefix: str, steps: int, cfg: float) -> None:
    """The same seed sampled plainly and with a speed-up node, for comparing time and look."""
    _sample_and_save(g, (ckpt, 0), pos, neg, latent, (ckpt, 2), "attnlab_plain", steps, cfg, "KSampler (plain)")
    _sample_and_save(g, patched, pos, neg, latent, (ckpt, 2), prefix, steps, cfg, f"KSampler ({prefix[8:]})")


def tome_sdxl(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "sd_xl_base_1.0.safetensors", "a sprawling fantasy city on terraced cliffs, waterfalls, morning haze, "
        "highly detailed", "blurry, lowres", "EmptyLatentImage", 2048)
    tome = g.add("AttnLabToMe", [0.5, 2, 2, "1", 0, "fixed", True, 0.0, 1.0, "", "all", "both"], model=(ckpt, 0))
    _speed_pair(g, ckpt, (tome, 0), (pos, 0), (neg, 0), (latent, 0), "attnlab_tome", 25, 6.0)
    g.note("## Token merging on SDXL at 2048x2048\n\n**AttnLabToMe** merges half of the image tokens of each "
           "self-attention at the finest attention level (`max_downsample` 1) into their most similar neighbours "
           "before attention and copies the results back after (Bolya & Hoffman 2023). At 2048x2048 self-attention "
           "dominates the cost, so the merged sampler is markedly faster; fine texture softens first. Raise "
           "`ratio` for speed, lower it (or set `end_percent` to 0.5 to merge only the early, coarse steps) for "
           "detail.")


def todo_sd15(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "v1-5-pruned-emaonly.safetensors", "an old library with tall bookshelves and a spiral staircase, warm "
        "light", "blurry, lowres", "EmptyLatentImage", 1024)
    todo = g.add("AttnLabToDo", [2, "1", 0.0, 1.0, "", "all", "both"], model=(ckpt, 0))
    _speed_pair(g, ckpt, (todo, 0), (pos, 0), (neg, 0), (latent, 0), "attnlab_todo", 20, 7.0)
    g.note("## Token downsampling on SD1.5\n\n**AttnLabToDo** pools the keys and values of the finest "
           "self-attention level 2x2 on the token grid (Smith et al. 2024): each query still gets its own output, "
           "but attends to a quarter of the keys, so that attention costs about a quarter. Queries are untouched, so "
           "the layout holds; very fine detail softens a little. `factor` 4 is faster and softer.")


TOY_JOINT = "a red circle and a blue square"


def reuse_sdxl(g: Graph) -> None:
    ckpt, pos, neg, latent = _text_to_image(
        g, "sd_xl_base_1.0.safetensors", "a lighthouse on a rocky coast at dusk, crashing waves, dramatic sky",
        "blurry, lowres", "EmptyLatentImage", 1024)
    reuse = g.add("AttnLabAttentionReuse", [0.05, True, True, 0.0, 1.0, "", "all"], model=(ckpt, 0))
    _speed_pair(g, ckpt, (reuse, 0), (pos, 0), (neg, 0), (latent, 0), "attnlab_reuse", 30, 6.0)
    g.note("## Attention reuse on SDXL\n\n**AttnLabAttentionReuse** (after DiTFastAttn, Yuan et al. 2024) skips an "
           "attention call when its inputs changed by less than 5% since the step that last computed it, and "
           "reuses that output; where the negative prompt's inputs are that close to the positive's, one output "
           "serves both. Most reuse comes in the late, fine steps. The console says how often it reused when the "
           "sampler ends. Lower `threshold` for fidelity, raise it for speed; each selected site keeps a copy of "
           "its inputs and output while sampling.")


def toy_shapes(g: Graph) -> None:
    toy = g.add("AttnLabToyModel", title="Toy model (no download)", column=0)
    pos = g.add("CLIPTextEncode", [TOY_JOINT], title="Joint prompt", clip=(toy, 1))
    neg = g.add("CLIPTextEncode", [""], title="Negative", clip=(toy, 1))
    latent = g.add("EmptyLatentImage", [128, 128, 4], column=1)  # 16x16 latents: the toy VAE decodes 64x64
    node, _, _ = _regions(g, (toy, 1), 128, ("a red circle", "a blue square"), TOY_JOINT, (toy, 0), "hard", 0.0)
    _sample_and_save(g, (toy, 0), (pos, 0), (neg, 0), (latent, 0), (toy, 2), "attnlab_toy_joint", 20, 8.0,
                     "KSampler (one joint prompt)")
    _sample_and_save(g, (node, 0), (node, 1), (neg, 0), (latent, 0), (toy, 2), "attnlab_toy_regions", 20, 8.0,
                     "KSampler (regions)")
    g.note("## Regional prompts on the toy model\n\n**AttnLabToyModel** is the pack's own tiny text-to-image "
           "model (trained on flat shapes, 64x64): it needs no download, so you can try every effect at once. "
           "The joint prompt leaves it to chance which shape lands where; with two **AttnLabRegion**s (left half "
           "'a red circle', right half 'a blue square') the red circle is drawn on the left and the blue square "
           "on the right. Four seeds per sampler.\n\n" + REGION_NOTE)


EXAMPLES = {"toy_shapes": toy_shapes, "tome_sdxl": tome_sdxl, "todo_sd15": todo_sd15,
            "temperature_sd15": temperature_sd15, "guidance_pag_seg_sdxl": guidance_pag_seg_sdxl,
            "slg_sd35": slg_sd35, "nag_flux_cfg1": nag_flux_cfg1, "slg_wan": slg_wan,
            "video_merge_wan": video_merge_wan, "reuse_sdxl": reuse_sdxl, "token_weights_sd15": token_weights_sd15,
            "token_weights_sdxl": token_weights_sdxl, "token_weights_flux": token_weights_flux,
            "regional_sd15": regional_sd15, "regional_sdxl": regional_sdxl, "regional_flux": regional_flux}


def build(name: str, mapping) -> Graph:
    g = Graph(mapping)
    EXAMPLES[name](g)
    return g


def main() -> int:
    from tools.run_workflow import load_host_nodes
    logging.basicConfig(level=logging.WARNING)
    hostenv.bootstrap()
    mapping = load_host_nodes()
    for name in EXAMPLES:
        build(name, mapping).write(WORKFLOWS / f"{name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
