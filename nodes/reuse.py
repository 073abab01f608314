"""AttnLabAttentionReuse: skip attention where its inputs barely changed, across steps and cond/uncond
(attention.reuse)."""
from __future__ import annotations

from comfy_api.latest import io

from ..attention.reuse import AttentionReuse
from ..attention.site import CROSS, JOINT, SELF
from .errors import node_error
from .host import add_effect, family_of
from .schedule_inputs import build_schedule, schedule_inputs

REUSE_ID = "AttnLabAttentionReuse"
THRESHOLD_MAX = 0.5


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= THRESHOLD_MAX:
        raise node_error(REUSE_ID, "threshold", f"{threshold} is outside 0.0-{THRESHOLD_MAX}",
                         "use 0.0 for no reuse, 0.02-0.1 for a speed-up with little loss")


class AttnLabAttentionReuse(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=REUSE_ID,
            display_name="Attention Reuse (DiTFastAttn)",
            category="attention_lab/speed",
            description="Attention reuse for speed (after Yuan et al. 2024, DiTFastAttn): at the selected sites, "
                        "when the attention's inputs changed less than the threshold since the step that last "
                        "computed it, that step's output is reused; when the negative prompt's inputs are that close "
                        "to the positive's, the positive's output serves both. The log says how often it reused "
                        "when sampling ends. Costs memory: each selected site keeps a copy of its inputs and output.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch. It is cloned; the input stays unchanged."),
                io.Float.Input("threshold", default=0.05, min=0.0, max=THRESHOLD_MAX, step=0.005,
                               tooltip="Largest relative change of the attention inputs (L1 of q, k, v) that still "
                                       "reuses. 0 = never (unchanged output). 0.02-0.05 reuses mostly in the late, "
                                       "fine steps with little visible change; 0.1 and above reuses early steps too "
                                       "and can soften detail or shift the composition."),
                io.Boolean.Input("across_steps", default=True,
                                 tooltip="Reuse a site's output from the step that last computed it while the site's "
                                         "inputs stay close to that step's."),
                io.Boolean.Input("across_cfg", default=True,
                                 tooltip="Let the negative (uncond) half use the positive half's output where their "
                                         "inputs are close (common in self-attention at low resolution)."),
                *schedule_inputs((SELF, JOINT, CROSS), apply_to=False),
            ],
            outputs=[io.Model.Output(tooltip="The model with the effect added to its Attention Lab stack.")],
        )

    @classmethod
    def execute(cls, model, threshold, across_steps, across_cfg, start_percent, end_percent, blocks,
                kind) -> io.NodeOutput:
        check_threshold(threshold)
        family = family_of(model, REUSE_ID)
        schedule = build_schedule(REUSE_ID, model, family, start_percent, end_percent, blocks, kind)
        effect = AttentionReuse(schedule, threshold=threshold, across_steps=across_steps, across_cfg=across_cfg)
        return io.NodeOutput(add_effect(model, effect, REUSE_ID))
