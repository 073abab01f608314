"""The pack as users meet it: README tables match the code, every workflow loads with matching link types,
every node has a doc page and an example workflow, the registry metadata is well-formed."""
from __future__ import annotations

import json
import tomllib

import pytest

from tools.hostenv import PACK_ROOT

WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


@pytest.fixture(scope="module")
def registry():
    from tools.run_workflow import load_host_nodes
    return load_host_nodes()


def test_readme_tables_are_generated_from_the_code():
    from tools.readme_tables import tables
    assert tables() in (PACK_ROOT / "README.md").read_text(), "run: python -m tools.readme_tables --write"


def _input_types(cls) -> dict:
    spec = cls.INPUT_TYPES()
    return {**spec.get("required", {}), **spec.get("optional", {})}


def _type_of(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_exist_and_links_join_matching_types(path, registry):
    wf = json.loads(path.read_text())
    by_id = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        assert node["type"] in FRONTEND_ONLY or node["type"] in registry, f"{path.name}: unknown {node['type']}"
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        src_cls, dst_node = registry[by_id[src]["type"]], by_id[dst]
        assert src_cls.RETURN_TYPES[src_slot] == typ, f"{path.name}: link {link_id} leaves a {typ} slot"
        name = dst_node["inputs"][dst_slot]["name"]
        want = _type_of(_input_types(registry[dst_node["type"]])[name])
        assert want == typ or want == "*", f"{path.name}: link {link_id} brings {typ} to {name} ({want})"


def test_every_node_has_docs_and_an_example_workflow():
    from attention_lab.nodes.extension import NODES
    used = {n["type"] for p in WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    for node in NODES:
        node_id = node.define_schema().node_id
        assert (PACK_ROOT / "js" / "docs" / f"{node_id}.md").is_file(), f"no doc page for {node_id}"
        assert node_id in used, f"no example workflow uses {node_id}"


def test_registry_metadata():
    meta = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())
    assert "comfyui" not in meta["project"]["name"].lower()
    assert meta["project"]["dependencies"] == []
    assert meta["tool"]["comfy"]["requires-comfyui"].startswith(">=")
    assert meta["tool"]["comfy"]["web"] == "js"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_files_are_what_the_authoring_code_writes(path, registry):
    from tools.example_workflows import EXAMPLES, build
    assert path.stem in EXAMPLES, "author it in tools/example_workflows.py"
    expected = build(path.stem, registry).to_json(path.stem)
    assert json.loads(path.read_text()) == json.loads(json.dumps(expected)), \
        "run: python -m tools.example_workflows"
