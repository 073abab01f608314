"""Workflow JSON formats: the UI format that File > Save writes, and the API format the executor runs.

``ui_to_api`` converts the first to the second using each node class's input spec (INPUT_TYPES, or a server's
/object_info): widget values are stored by position, so they are matched to the widget-type inputs in declared
order, skipping the extra value a seed widget's "control after generate" adds. Reroutes are followed, primitive
nodes become literal values, bypassed nodes pass their matching input through, muted nodes are dropped.
"""
from __future__ import annotations

from typing import Callable

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
SEED_NAMES = {"seed", "noise_seed"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}
MUTED, BYPASSED = 2, 4

InputSpec = Callable[[str], list]  # class_type -> [(name, spec)] in declared order, required then optional


class RunError(RuntimeError):
    """A failure the runner reports in one line."""


class WorkflowError(ValueError):
    """A workflow that cannot be converted; the message names the node and what is wrong."""


def is_ui_format(workflow: dict) -> bool:
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def spec_from_input_types(input_types: dict) -> list:
    """[(name, spec)] from an INPUT_TYPES() or /object_info "input" dict."""
    return [item for part in ("required", "optional") for item in (input_types.get(part) or {}).items()]


def _is_widget(spec) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control(name: str, spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(options.get("control_after_generate")) or name in SEED_NAMES


def widget_values(node: dict, spec: list) -> dict:
    """Input name -> value for the node's widgets, from its positional ``widgets_values``."""
    if isinstance(node.get("widgets_values"), dict):
        return dict(node["widgets_values"])
    values = list(node.get("widgets_values") or [])
    out, i = {}, 0
    for name, item in spec:
        if not _is_widget(item) or i >= len(values):
            continue
        out[name] = values[i]
        i += 1
        if _has_control(name, item) and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
    return out


class _Graph:
    def __init__(self, workflow: dict):
        self.nodes = {n["id"]: n for n in workflow["nodes"]}
        self.links = {}
        for link in workflow["links"]:
            link_id, src, slot = (link["id"], link["origin_id"], link["origin_slot"]) if isinstance(link, dict) \
                else link[:3]
            self.links[link_id] = (src, slot)

    def source(self, link_id, seen=()):
        """The (node id, slot) that really feeds ``link_id``, through reroutes and bypassed nodes."""
        if link_id not in self.links:
            raise WorkflowError(f"link {link_id} is missing from the workflow's links")
        src, slot = self.links[link_id]
        node = self.nodes.get(src)
        if node is None:
            raise WorkflowError(f"link {link_id} comes from node {src}, which is not in the workflow")
        if src in seen:
            raise WorkflowError(f"node {src} ({node['type']}) is part of a reroute or bypass cycle")
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            return self.source(self._through(node, slot), seen + (src,))
        return src, slot

    def _through(self, node: dict, slot: int):
        out_type = (node.get("outputs") or [{}])[slot].get("type") if node.get("outputs") else None
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None and (node["type"] == "Reroute" or inp.get("type") == out_type):
                return inp["link"]
        raise WorkflowError(f"node {node['id']} ({node['type']}) is bypassed but has no linked input of type "
                            f"{out_type} to pass through")


def _node_inputs(graph: _Graph, node: dict, spec: list) -> dict:
    inputs = widget_values(node, spec)
    for inp in node.get("inputs") or []:
        if inp.get("link") is None:
            continue
        src, slot = graph.source(inp["link"])
        src_node = graph.nodes[src]
        if src_node["type"] == "PrimitiveNode":
            inputs[inp["name"]] = (src_node.get("widgets_values") or [None])[0]
        else:
            inputs[inp["name"]] = [str(src), slot]
    return inputs


def ui_to_api(workflow: dict, input_spec: InputSpec) -> dict:
    """UI-format workflow -> API-format prompt {id: {class_type, inputs, _meta}}."""
    graph = _Graph(workflow)
    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or kind in ("Reroute", "PrimitiveNode") or node.get("mode") in (MUTED, BYPASSED):
            continue
        spec = input_spec(kind)
        if spec is None:
            raise WorkflowError(f"node {node['id']} has type '{kind}', which neither the host nor the installed packs "
                                "provide")
        prompt[str(node["id"])] = {"class_type": kind, "inputs": _node_inputs(graph, node, spec),
                                   "_meta": {"title": node.get("title") or kind}}
    return prompt
