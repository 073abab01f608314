"""AttnLabTemperature: scale attention logits, fixed or per site from the token count (Jin et al. 2023)."""
from __future__ import annotations

from comfy_api.latest import io

from ..attention.site import CROSS, JOINT, SELF
from ..attention.temperature import MODES, Temperature
from .errors import node_error
from .host import add_effect, family_of
from .schedule_inputs import build_schedule, schedule_inputs

NODE_ID = "AttnLabTemperature"
SCALE_RANGE = (0.05, 4.0)


def check_scale(scale: float) -> None:
    lo, hi = SCALE_RANGE
    if not lo <= scale <= hi:
        raise node_error(NODE_ID, "scale", f"{scale} is outside {lo}-{hi}",
                         "use 1.0 for no change, below 1 to soften attention, above 1 to sharpen it")


class AttnLabTemperature(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_ID,
            display_name="Attention Temperature",
            category="attention_lab/reweight",
            description="Multiplies the attention logits at the selected sites. 'resolution' mode sets the factor "
                        "per site from its token count, sqrt(log N / log N_train), so a model keeps the attention "
                        "entropy it had at its training size when you render larger or smaller (Jin et al. 2023).",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch. It is cloned; the input stays unchanged."),
                io.Float.Input("scale", default=1.0, min=SCALE_RANGE[0], max=SCALE_RANGE[1], step=0.01,
                               tooltip="Logit multiplier. 1.0 = unchanged; above 1 sharpens attention, below 1 "
                                       "softens it. In 'resolution' mode it multiplies the per-site factor."),
                io.Combo.Input("mode", options=list(MODES), default="fixed",
                               tooltip="fixed: the same factor everywhere. resolution: per-site factor from the "
                                       "number of keys now versus at the training resolution (use it when "
                                       "rendering far from the model's native size)."),
                io.Int.Input("train_resolution", default=0, min=0, max=8192, step=8,
                             tooltip="Side length in pixels the model was trained at, for 'resolution' mode "
                                     "(0 = the family's: 512 SD1.5, 768 SD2, 1024 SDXL/SD3/Flux, ...)."),
                *schedule_inputs((SELF, CROSS, JOINT)),
            ],
            outputs=[io.Model.Output(tooltip="The model with the effect added to its Attention Lab stack.")],
        )

    @classmethod
    def execute(cls, model, scale, mode, train_resolution, start_percent, end_percent, blocks, kind,
                apply_to) -> io.NodeOutput:
        check_scale(scale)
        family = family_of(model, NODE_ID)
        schedule = build_schedule(NODE_ID, model, family, start_percent, end_percent, blocks, kind, apply_to)
        pixels = train_resolution ** 2 if train_resolution > 0 else family.train_pixels
        effect = Temperature(schedule, scale=scale, mode=mode, train_pixels=pixels)
        return io.NodeOutput(add_effect(model, effect, NODE_ID))
