"""Author example workflows in code and write them in the UI format (what File > Save writes).

    g = Graph(mapping)                       # mapping: the host's NODE_CLASS_MAPPINGS with the pack loaded
    ckpt = g.add("CheckpointLoaderSimple", ["model.safetensors"])
    pos = g.add("CLIPTextEncode", ["a cat"], clip=(ckpt, 1))
    g.note("## What this shows ...")
    g.write(path)

Slot types, input names and link types come from the node classes, so a written workflow always matches them.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from tools.workflow_format import spec_from_input_types

COLUMN, ROW = 360, 260


class Graph:
    def __init__(self, mapping: dict):
        self.mapping = mapping
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def _output(self, src: int, slot: int) -> str:
        node = self.nodes[src - 1]
        return node["outputs"][slot]["type"]

    def add(self, node_type: str, widgets: list | None = None, title: str | None = None, column: int | None = None,
            **links) -> int:
        """Add a node; ``links`` maps input name -> (source node id, source slot). Returns the node id."""
        cls = self.mapping[node_type]
        spec = dict(spec_from_input_types(cls.INPUT_TYPES()))
        node_id = len(self.nodes) + 1
        inputs = []
        for name, (src, slot) in links.items():
            link_id = len(self.links) + 1
            typ = self._output(src, slot)
            self.links.append([link_id, src, slot, node_id, len(inputs), typ])
            self.nodes[src - 1]["outputs"][slot]["links"].append(link_id)
            kind = spec[name][0]
            entry = {"name": name, "type": typ if not isinstance(kind, str) else kind, "link": link_id}
            inputs.append(entry)
        col = column if column is not None else max((self._column(s) for s, _ in links.values()), default=-1) + 1
        row = sum(1 for n in self.nodes if n["pos"][0] == col * COLUMN)
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(cls.RETURN_TYPES, getattr(cls, "RETURN_NAMES", None) or
                                                  cls.RETURN_TYPES))]
        node = {"id": node_id, "type": node_type, "pos": [col * COLUMN, row * ROW], "size": [320, 200],
                "flags": {}, "order": node_id - 1, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node_type}, "widgets_values": list(widgets or [])}
        if node_type.startswith("AttnLab"):
            node["properties"]["cnr_id"] = "attention-lab"
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def _column(self, node_id: int) -> int:
        return self.nodes[node_id - 1]["pos"][0] // COLUMN

    def note(self, markdown: str) -> None:
        self.nodes.append({"id": len(self.nodes) + 1, "type": "MarkdownNote", "pos": [0, -320], "size": [420, 280],
                           "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                           "properties": {}, "widgets_values": [markdown]})

    def to_json(self, name: str) -> dict:
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"attention-lab/{name}")), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(path.stem), indent=1) + "\n")
