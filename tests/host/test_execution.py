"""Whole graphs through the host's real execution engine (no HTTP server): the pack loads as a custom node,
a patched branch leaves its unpatched neighbour bit-identical, and Inspect reports through the UI."""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import torch

RESULTS: dict = {}


class TestTinySD15:
    """Test-only loader: the tiny SD1.5 bundle."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self):
        from tools.tiny_models import tiny_bundle
        return tiny_bundle("sd15", seed=0)


class TestLatentSink:
    """Test-only output node: keeps the latent it gets under its label."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "label": ("STRING", {"default": ""})}}
    RETURN_TYPES = ()
    FUNCTION = "keep"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def keep(self, samples, label):
        RESULTS[label] = samples["samples"].clone()
        return {}


class StubServer:
    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


@pytest.fixture(scope="module")
def host_nodes():
    from tools.run_workflow import load_host_nodes
    mapping = load_host_nodes()
    mapping.update(TestTinySD15=TestTinySD15, TestLatentSink=TestLatentSink)
    return mapping


def execute(prompt):
    import execution
    prompt = json.loads(json.dumps(prompt))
    pid = str(uuid.uuid4())
    valid, err, outputs, node_errors = asyncio.run(execution.validate_prompt(pid, prompt, None))
    assert valid, (err, node_errors)
    ex = execution.PromptExecutor(StubServer(), cache_type=execution.CacheType.CLASSIC)
    ex.execute(prompt, pid, extra_data={}, execute_outputs=outputs)
    assert ex.success, ex.status_messages
    return ex.history_result["outputs"]


def graph(patched_branch: bool, scale=1.5):
    g = {
        "1": {"class_type": "TestTinySD15", "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red circle"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 7, "steps": 3, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "TestLatentSink", "inputs": {"samples": ["5", 0], "label": "plain"}},
    }
    if patched_branch:
        g["7"] = {"class_type": "AttnLabTemperature", "inputs": {
            "model": ["1", 0], "scale": scale, "mode": "fixed", "train_resolution": 0, "start_percent": 0.0,
            "end_percent": 1.0, "blocks": "", "kind": "all", "apply_to": "both"}}
        g["8"] = {"class_type": "KSampler", "inputs": {**g["5"]["inputs"], "model": ["7", 0]}}
        g["9"] = {"class_type": "TestLatentSink", "inputs": {"samples": ["8", 0], "label": "patched"}}
        g["10"] = {"class_type": "AttnLabInspect", "inputs": {"model": ["7", 0], "latent": ["4", 0]}}
    return g


def test_patched_branch_leaves_its_neighbour_bit_identical(host_nodes):
    RESULTS.clear()
    execute(graph(patched_branch=False))
    alone = RESULTS["plain"]
    RESULTS.clear()
    outputs = execute(graph(patched_branch=True))
    assert torch.equal(RESULTS["plain"], alone)
    assert not torch.equal(RESULTS["patched"], alone)
    report = outputs["10"]["text"][0]
    assert "1. AttnLabTemperature scale=1.5" in report and "16 x 16" not in report


def test_neutral_node_in_the_graph_is_exact(host_nodes):
    RESULTS.clear()
    execute(graph(patched_branch=True, scale=1.0))
    assert torch.equal(RESULTS["plain"], RESULTS["patched"])


def test_out_of_range_widget_is_refused_by_validation(host_nodes):
    import execution
    prompt = graph(patched_branch=True, scale=9.0)
    valid, err, outputs, node_errors = asyncio.run(execution.validate_prompt("x", prompt, None))
    assert "7" in node_errors, "the branch through the bad node is refused before anything runs"
    assert "bigger than max" in json.dumps(node_errors["7"]) and "scale" in json.dumps(node_errors["7"])
