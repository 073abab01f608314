"""AttnLabToMe, AttnLabToDo and AttnLabVideoMerge: fewer image tokens in self- and joint attention, for speed
(attention.merge, attention.vidtome)."""
from __future__ import annotations

import math

from comfy_api.latest import io

from ..attention.merge import TokenDownsample, TokenMerge
from ..attention.site import JOINT, SELF
from ..attention.vidtome import BATCH, FRAME_AXES, TOKENS, VideoMerge
from .errors import node_error
from .families import UNET, Family
from .host import add_effect, family_of
from .schedule_inputs import ALL_KINDS, build_schedule, schedule_inputs
from .sites import model_sites

TOME_ID, TODO_ID, VIDEO_ID = "AttnLabToMe", "AttnLabToDo", "AttnLabVideoMerge"
RATIO_MAX = 0.95
STRIDE_RANGE = (1, 8)
WINDOW_RANGE = (1, 16)
FACTOR_RANGE = (1, 8)
DOWNSAMPLE = ("1", "2", "4", "8")
SEED_MAX = 0xFFFFFFFFFFFFFFFF

_DOWNSAMPLE_TIP = ("Which resolution levels: 1 = only the model's finest attention level (where most of the time "
                   "goes), 2 also the next, and so on. Higher reaches more of a UNet for more speed, at a larger "
                   "cost in detail and coherence. DiTs have one level.")


RATIO_FIX = {TOME_ID: "use 0.0 for no change or 0.3-0.6 for a speed-up with little loss; keep it below 1",
             VIDEO_ID: "use 0.0 for no change, 0.5-0.8 on video DiTs, 0.7-0.9 with frames in the batch (lower "
                       "ratios are slower there); keep it below 1"}


def proportional_input():
    return io.Boolean.Input("proportional", default=True,
                            tooltip="Proportional attention: a merged token counts as the tokens it stands for "
                                    "(log-size bias on its keys). On (default), merging keys costs almost no quality "
                                    "beyond merging queries (measured: a third of the deviation without it). Off "
                                    "lets the host keep an unmasked kernel, a little faster on some GPUs.")


def check_ratio(ratio: float, node_id: str = TOME_ID) -> None:
    if not 0.0 <= ratio <= RATIO_MAX:
        raise node_error(node_id, "ratio", f"{ratio} is outside 0.0-{RATIO_MAX} (1.0 would merge every token)",
                         RATIO_FIX[node_id])


def check_int(node_id: str, name: str, value: int, bounds: tuple[int, int], fix: str) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise node_error(node_id, name, f"{value} is outside {bounds[0]}-{bounds[1]}", fix)


def parse_downsample(node_id: str, value: str) -> int:
    if str(value) not in DOWNSAMPLE:
        raise node_error(node_id, "max_downsample", f"'{value}' is not a choice", f"pick {', '.join(DOWNSAMPLE)}")
    return int(value)


def check_kind(node_id: str, kind: str) -> None:
    if kind not in (ALL_KINDS, SELF, JOINT):
        raise node_error(node_id, "kind", f"'{kind}' attention is not one this node changes",
                         f"pick {ALL_KINDS}, {SELF} or {JOINT}")


def token_pixels(model, family: Family) -> float:
    """Side in pixels of one token at the model's finest attention level (VAE scale x patch x that level's step)."""
    side = 64
    tokens = [s.image_tokens for s in model_sites(model, family, (1, 1, side, side)) if s.image_tokens]
    if not tokens:
        return float(family.vae_scale * family.patch[1])
    return family.vae_scale * side / math.sqrt(max(tokens))


class AttnLabToMe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=TOME_ID,
            display_name="Token Merging (ToMe)",
            category="attention_lab/speed",
            description="Token merging for speed (Bolya & Hoffman 2023, ToMe for SD): before each selected self- or "
                        "joint attention, the most redundant image tokens merge into similar ones, the host's kernel "
                        "attends fewer tokens, and every merged token gets its group's output back. Text tokens are "
                        "never merged. Faster at large sizes, at some cost in fine detail.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch. It is cloned; the input stays unchanged."),
                io.Float.Input("ratio", default=0.5, min=0.0, max=RATIO_MAX, step=0.05,
                               tooltip="Share of each frame's image tokens merged away. 0 = unchanged. 0.3-0.5 "
                                       "speeds up large images with little loss; higher loses fine detail and "
                                       "texture first. At most the non-destination tokens merge (0.75 with 2x2)."),
                io.Int.Input("stride_x", default=2, min=STRIDE_RANGE[0], max=STRIDE_RANGE[1],
                             tooltip="Width of the cells that each keep one random destination token. Larger "
                                     "cells allow more merging but merge across larger distances, blurring "
                                     "detail. 1x1 merges nothing."),
                io.Int.Input("stride_y", default=2, min=STRIDE_RANGE[0], max=STRIDE_RANGE[1],
                             tooltip="Height of the destination cells (see stride_x). A stride larger than the "
                                     "token grid of a selected level is refused at sampling time."),
                io.Combo.Input("max_downsample", options=list(DOWNSAMPLE), default="1", tooltip=_DOWNSAMPLE_TIP),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX,
                             tooltip="Seed of the random destination choice. The same seed repeats a run bit for "
                                     "bit; another seed gives slightly different details, no change in quality."),
                proportional_input(),
                *schedule_inputs((SELF, JOINT)),
            ],
            outputs=[io.Model.Output(tooltip="The model with the effect added to its Attention Lab stack.")],
        )

    @classmethod
    def execute(cls, model, ratio, stride_x, stride_y, max_downsample, seed, proportional, start_percent,
                end_percent, blocks, kind, apply_to) -> io.NodeOutput:
        check_ratio(ratio)
        for name, value in (("stride_x", stride_x), ("stride_y", stride_y)):
            check_int(TOME_ID, name, value, STRIDE_RANGE, "use 2 (the default) or up to 8 for cells that merge more")
        downsample = parse_downsample(TOME_ID, max_downsample)
        check_kind(TOME_ID, kind)
        family = family_of(model, TOME_ID)
        schedule = build_schedule(TOME_ID, model, family, start_percent, end_percent, blocks, kind, apply_to)
        effect = TokenMerge(schedule, ratio=ratio, stride=(stride_y, stride_x), max_downsample=downsample,
                            seed=seed, proportional=proportional, token_pixels=token_pixels(model, family))
        return io.NodeOutput(add_effect(model, effect, TOME_ID))


class AttnLabToDo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=TODO_ID,
            display_name="Token Downsampling (ToDo)",
            category="attention_lab/speed",
            description="Token downsampling for speed (Smith et al. 2024, ToDo): at each selected self- or joint "
                        "attention every image token still asks, but attends image keys and values average-pooled "
                        "on the token grid. Text keys are kept. Faster at high resolutions, at some cost in fine "
                        "detail.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch. It is cloned; the input stays unchanged."),
                io.Int.Input("factor", default=2, min=FACTOR_RANGE[0], max=FACTOR_RANGE[1],
                             tooltip="Pooling factor per side: 2 attends a quarter of the image keys, 3 a ninth. "
                                     "1 = unchanged. 2 costs little detail at large sizes; 3 and above soften "
                                     "textures and small features. Grids that do not divide are pooled with "
                                     "partial border cells."),
                io.Combo.Input("max_downsample", options=list(DOWNSAMPLE), default="1", tooltip=_DOWNSAMPLE_TIP),
                *schedule_inputs((SELF, JOINT)),
            ],
            outputs=[io.Model.Output(tooltip="The model with the effect added to its Attention Lab stack.")],
        )

    @classmethod
    def execute(cls, model, factor, max_downsample, start_percent, end_percent, blocks, kind,
                apply_to) -> io.NodeOutput:
        check_int(TODO_ID, "factor", factor, FACTOR_RANGE, "use 1 for no change, 2 for a speed-up with little loss")
        downsample = parse_downsample(TODO_ID, max_downsample)
        check_kind(TODO_ID, kind)
        family = family_of(model, TODO_ID)
        schedule = build_schedule(TODO_ID, model, family, start_percent, end_percent, blocks, kind, apply_to)
        effect = TokenDownsample(schedule, factor=factor, max_downsample=downsample,
                                 token_pixels=token_pixels(model, family))
        return io.NodeOutput(add_effect(model, effect, TODO_ID))


def check_frames(family: Family, frames_in: str) -> None:
    """Video merging needs frames: in the tokens of a video model, or in the batch of a UNet (AnimateDiff-style)."""
    if frames_in not in FRAME_AXES:
        raise node_error(VIDEO_ID, "frames_in", f"'{frames_in}' is not a choice", f"pick {' or '.join(FRAME_AXES)}")
    if frames_in == TOKENS and family.vae_temporal == 1:
        raise node_error(VIDEO_ID, "model", f"{family.label} makes still images: its tokens hold no frames",
                         "connect a video model (WAN, HunyuanVideo, LTXV), or set frames_in to 'batch' when "
                         "AnimateDiff-style motion modules put the frames of a UNet video in the batch")
    if frames_in == BATCH and family.arch != UNET:
        raise node_error(VIDEO_ID, "frames_in", f"'batch' is for UNet video, but {family.label} keeps a video's "
                         "frames in its tokens and its batch items are separate samples",
                         "set frames_in to 'tokens'")


class AttnLabVideoMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=VIDEO_ID,
            display_name="Video Token Merging (VidToMe)",
            category="attention_lab/speed",
            description="Cross-frame token merging for video (after Li et al. 2024, VidToMe): in each window of "
                        "neighbouring frames, tokens of the other frames that look like a token of one chosen frame "
                        "merge into it, attention runs on the window's merged tokens together, and every token gets "
                        "its output back. Faster, and the frames of a window keep one appearance (less flicker); "
                        "high ratios can freeze small motions. Text tokens are never merged.",
            inputs=[
                io.Model.Input("model", tooltip="The video model to patch. It is cloned; the input stays unchanged."),
                io.Float.Input("ratio", default=0.7, min=0.0, max=RATIO_MAX, step=0.05,
                               tooltip="Share of the tokens of each window's other frames merged into the chosen "
                                       "frame. 0 = unchanged. On video DiTs any ratio saves time (0.7 with window 2 "
                                       "attends 65% of the tokens); with frames in the batch the window is attended "
                                       "jointly, so only ratios above about 0.6 are faster. Higher ratios steady "
                                       "the video more and lose more fine motion."),
                io.Int.Input("window", default=2, min=WINDOW_RANGE[0], max=WINDOW_RANGE[1],
                             tooltip="Neighbouring frames (latent frames on video DiTs) merged together. 1 = "
                                     "unchanged. Larger windows merge more and hold more frames to one look; motion "
                                     "within a window is what they cost."),
                io.Combo.Input("frames_in", options=list(FRAME_AXES), default=TOKENS,
                               tooltip="Where the model keeps frames: 'tokens' for video DiTs (WAN, HunyuanVideo, "
                                       "LTXV), 'batch' for UNet video whose frames are the batch items "
                                       "(AnimateDiff-style motion modules on SD1.5/SDXL)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX,
                             tooltip="Seed of the random choice of each window's destination frame. The same seed "
                                     "repeats a run bit for bit."),
                proportional_input(),
                io.Combo.Input("max_downsample", options=list(DOWNSAMPLE), default="1", tooltip=_DOWNSAMPLE_TIP),
                *schedule_inputs((SELF, JOINT)),
            ],
            outputs=[io.Model.Output(tooltip="The model with the effect added to its Attention Lab stack.")],
        )

    @classmethod
    def execute(cls, model, ratio, window, frames_in, seed, proportional, max_downsample, start_percent,
                end_percent, blocks, kind, apply_to) -> io.NodeOutput:
        check_ratio(ratio, VIDEO_ID)
        check_int(VIDEO_ID, "window", window, WINDOW_RANGE, "use 2 (the default) to 4 frames; 1 merges nothing")
        downsample = parse_downsample(VIDEO_ID, max_downsample)
        check_kind(VIDEO_ID, kind)
        family = family_of(model, VIDEO_ID)
        check_frames(family, frames_in)
        schedule = build_schedule(VIDEO_ID, model, family, start_percent, end_percent, blocks, kind, apply_to)
        effect = VideoMerge(schedule, ratio=ratio, window=window, frame_axis=frames_in, seed=seed,
                            proportional=proportional, max_downsample=downsample,
                            token_pixels=token_pixels(model, family))
        return io.NodeOutput(add_effect(model, effect, VIDEO_ID))
