"""The schedule inputs every effect node takes, and their conversion to a Schedule.

Widget order is permanent (saved workflows store widget values by position): effect nodes put their own
widgets first and these after them.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..attention.address import SELECTOR_HELP, BlockSelector
from ..attention.schedule import APPLY_TO, Schedule
from ..attention.site import CROSS, JOINT
from .errors import node_error
from .families import Family
from .sites import model_addresses

ALL_KINDS = "all"


def schedule_inputs(kinds: tuple[str, ...], apply_to: bool = True, blocks_default: str = "",
                    blocks_tooltip: str = "", apply_to_default: str = "both") -> list:
    """start_percent, end_percent, blocks, kind (from ``kinds``) and, unless ``apply_to`` is False, apply_to."""
    inputs = [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Where in the sampling schedule the effect starts (0.0 = first step), in the same "
                               "percent convention as core nodes."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Where the effect stops (1.0 = last step). 0.0-0.5 means the first half."),
        io.String.Input("blocks", default=blocks_default,
                        tooltip=blocks_tooltip or "Which attention blocks: empty for all, or e.g. 'input.4-8, "
                                "output.*' (UNet) or 'double.*, single.0-9' (Flux). AttnLabInspect lists a model's "
                                "blocks."),
        io.Combo.Input("kind", options=[ALL_KINDS, *kinds], default=ALL_KINDS,
                       tooltip="Which attention: self (image to image), cross (image to text), joint (text and "
                               "image together, SD3/Flux/Qwen/HunyuanVideo), or all."),
    ]
    if apply_to:
        inputs.append(io.Combo.Input("apply_to", options=list(APPLY_TO), default=apply_to_default,
                                     tooltip="Which half of the CFG batch the effect changes: the positive (cond), "
                                             "the negative (uncond), or both."))
    return inputs


def parse_blocks(node_id: str, blocks: str) -> BlockSelector:
    try:
        return BlockSelector.parse(blocks)
    except ValueError as e:
        raise node_error(node_id, "blocks", str(e), SELECTOR_HELP) from None


def check_percents(node_id: str, start_percent: float, end_percent: float) -> None:
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= value <= 1.0:
            raise node_error(node_id, name, f"{value} is outside 0.0-1.0", "use a value from 0.0 to 1.0")
    if start_percent > end_percent:
        raise node_error(node_id, "start_percent", f"start {start_percent} comes after end {end_percent}",
                         "make start_percent at most end_percent")


def _check_selects(node_id: str, selector: BlockSelector, model, family: Family) -> None:
    addresses = model_addresses(model, family)
    unmatched = selector.unmatched_terms(addresses)
    if unmatched:
        groups = sorted({a.group for a in addresses})
        raise node_error(node_id, "blocks", f"'{', '.join(unmatched)}' selects no block of this {family.label} "
                         f"model (its groups: {', '.join(groups)}, e.g. {addresses[0]} .. {addresses[-1]})",
                         "fix or remove that term; AttnLabInspect lists every block")


def check_text_attention(node_id: str, family: Family) -> None:
    """An error naming the node when the family has no attention from image to text (cross or joint)."""
    if not {CROSS, JOINT} & set(family.kinds):
        raise node_error(node_id, "model", f"{family.label} has no cross- or joint attention to carry text",
                         "use a text-conditioned model (SD, SDXL, SD3, Flux, WAN, ...)")


def build_schedule(node_id: str, model, family: Family, start_percent: float, end_percent: float,
                   blocks: str, kind: str = ALL_KINDS, apply_to: str = "both") -> Schedule:
    """A Schedule from the widget values, checked against the model; errors name the node and input."""
    check_percents(node_id, start_percent, end_percent)
    selector = parse_blocks(node_id, blocks)
    _check_selects(node_id, selector, model, family)
    if kind != ALL_KINDS and kind not in family.kinds:
        raise node_error(node_id, "kind", f"{family.label} has no '{kind}' attention",
                         f"pick one of: all, {', '.join(family.kinds)}")
    if apply_to not in APPLY_TO:
        raise node_error(node_id, "apply_to", f"'{apply_to}' is not a choice", f"pick {', '.join(APPLY_TO)}")
    sampling = model.get_model_object("model_sampling")
    return Schedule(sigma_start=float(sampling.percent_to_sigma(start_percent)),
                    sigma_end=float(sampling.percent_to_sigma(end_percent)),
                    blocks=selector, kinds=None if kind == ALL_KINDS else frozenset({kind}), apply_to=apply_to,
                    percents=(start_percent, end_percent))
