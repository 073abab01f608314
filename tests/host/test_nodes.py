"""Node contract: schemas, bad input errors that name node, input and fix, the Inspect report."""
from __future__ import annotations

import types

import pytest

from attention_lab.nodes.extension import NODES
from attention_lab.nodes.inspect import AttnLabInspect, inspect_text
from attention_lab.nodes.temperature import AttnLabTemperature

DEFAULTS = dict(scale=1.2, mode="fixed", train_resolution=0, start_percent=0.0, end_percent=1.0, blocks="",
                kind="all", apply_to="both")


def temperature(model, **changes):
    return AttnLabTemperature.execute(model, **{**DEFAULTS, **changes}).args[0]


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.__name__)
def test_schema_ids_and_tooltips(node):
    schema = node.define_schema()
    assert schema.node_id.startswith("AttnLab") and schema.node_id == node.__name__
    assert schema.description and schema.display_name
    for inp in schema.inputs:
        assert inp.tooltip, f"{schema.node_id}.{inp.id} has no tooltip"


@pytest.mark.parametrize("changes,inp,fragment", [
    (dict(blocks="input.99"), "blocks", "selects no block"),
    (dict(blocks="input.x"), "blocks", "malformed index"),
    (dict(blocks="double.*"), "blocks", "selects no block"),
    (dict(scale=9.0), "scale", "outside"),
    (dict(start_percent=0.8, end_percent=0.2), "start_percent", "comes after"),
    (dict(kind="joint"), "kind", "has no 'joint'"),
])
def test_bad_input_names_node_input_and_fix(changes, inp, fragment, tiny):
    with pytest.raises(ValueError) as err:
        temperature(tiny("sd15").patcher, **changes)
    text = str(err.value)
    assert text.startswith("AttnLabTemperature: input ") and f"'{inp}'" in text
    assert fragment in text and "Fix:" in text


def test_unknown_family_is_refused_at_the_node(tiny):
    m = tiny("sd15").patcher.clone()
    m.model = types.SimpleNamespace(model_config=type("Lumina2", (), {})(), diffusion_model=None)
    with pytest.raises(ValueError, match=r"AttnLabTemperature: input 'model': the model family 'Lumina2'.*Fix: use"):
        temperature(m)


def test_unreachable_family_at_run_time_degrades_with_a_warning(tiny, sample, caplog, fresh_warnings):
    import logging
    t = tiny("sd15")
    m = temperature(t.patcher, scale=1.5)
    m.model_options["transformer_options"]["attnlab_family"] = "gone"
    with caplog.at_level(logging.WARNING, logger="attnlab"):
        out = sample(m, t)
    import torch
    assert torch.equal(out, sample(t.patcher, t))
    assert "not reachable" in caplog.text


def test_inspect_lists_sites_and_the_stack_in_order(tiny):
    t = tiny("sdxl")
    m = temperature(temperature(t.patcher, scale=1.3), scale=0.9, blocks="output.*", apply_to="cond")
    text = inspect_text(m, {"samples": t.latent()})
    assert "SDXL model" in text and "input" in text
    lines = text.splitlines()
    stack = lines[lines.index("Effects stacked on this MODEL, in order:") + 1:]
    assert stack[0].startswith("  1. AttnLabTemperature scale=1.3")
    assert stack[1].startswith("  2. AttnLabTemperature scale=0.9") and "blocks=output.*" in stack[1]
    out = AttnLabInspect.execute(m, None)
    assert out.args[0].startswith("Attention Lab: SDXL model")


def test_inspect_flux_lists_double_and_single_blocks(tiny):
    t = tiny("flux")
    text = inspect_text(t.patcher, {"samples": t.latent()})
    assert "double.0" in text and "single.1" in text and "(none)" in text
