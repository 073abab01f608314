"""The main command: UI-format conversion, shipped workflows end to end, clear one-line errors, --server."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools import run_workflow
from tools.workflow_format import RunError, ui_to_api


@pytest.fixture(scope="module")
def mapping():
    return run_workflow.load_host_nodes()


def test_ui_format_widgets_map_by_position_skipping_seed_control(mapping):
    wf = json.loads(run_workflow.resolve("temperature_sd15").read_text())
    api = ui_to_api(wf, run_workflow.local_spec(mapping))
    by_class = {}
    for node_id, node in api.items():
        by_class.setdefault(node["class_type"], []).append((node_id, node["inputs"]))
    (loader, _), = by_class["CheckpointLoaderSimple"]
    (latent, _), = by_class["EmptyLatentImage"]
    (temp_id, t), = by_class["AttnLabTemperature"]
    plain = next(inputs for _, inputs in by_class["KSampler"] if inputs["model"] == [loader, 0])
    assert (plain["seed"], plain["steps"], plain["cfg"], plain["sampler_name"], plain["scheduler"],
            plain["denoise"]) == (42, 20, 7.0, "euler", "normal", 1.0)
    assert plain["latent_image"] == [latent, 0]
    assert (t["scale"], t["mode"], t["train_resolution"], t["kind"], t["apply_to"]) == (1.0, "resolution", 512,
                                                                                         "self", "both")
    assert not any(n["class_type"] == "MarkdownNote" for n in api.values()), "notes are front-end only"


def _tiny_graph():
    """A UI-format graph with a reroute, a primitive feeding the seed, and a bypassed node."""
    return {"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "widgets_values": [64, 64, 1],
         "outputs": [{"type": "LATENT", "links": [1]}]},
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"type": "LATENT", "links": [2]}]},
        {"id": 3, "type": "LatentUpscaleBy", "mode": 4, "widgets_values": ["nearest-exact", 2.0],
         "inputs": [{"name": "samples", "type": "LATENT", "link": 2}], "outputs": [{"type": "LATENT", "links": [3]}]},
        {"id": 4, "type": "PrimitiveNode", "mode": 0, "widgets_values": [123, "fixed"], "inputs": [],
         "outputs": [{"type": "INT", "links": [4]}]},
        {"id": 5, "type": "LatentBatchSeedBehavior", "mode": 0, "widgets_values": ["fixed", 0],
         "inputs": [{"name": "samples", "type": "LATENT", "link": 3}]},
        {"id": 6, "type": "KSampler", "mode": 0, "widgets_values": [0, "randomize", 3, 8.0, "euler", "normal", 1.0],
         "inputs": [{"name": "seed", "type": "INT", "link": 4, "widget": {"name": "seed"}}]},
    ], "links": [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "LATENT"], [3, 3, 0, 5, 0, "LATENT"],
                 [4, 4, 0, 6, 0, "INT"]]}


def test_reroutes_primitives_and_bypass(mapping):
    api = ui_to_api(_tiny_graph(), run_workflow.local_spec(mapping))
    assert set(api) == {"1", "5", "6"}
    assert api["5"]["inputs"]["samples"] == ["1", 0], "through the reroute and the bypassed upscale"
    assert api["6"]["inputs"]["seed"] == 123 and api["6"]["inputs"]["steps"] == 3


@pytest.mark.parametrize("name", run_workflow.available())
def test_every_shipped_workflow_runs_end_to_end(name, tmp_path):
    result = run_workflow.run(name, tmp_path, steps=1)
    images = [f for f in result.files if f.suffix in (".png", ".webp")]
    assert images and all(f.stat().st_size > 0 for f in images)


def _api(name, mapping):
    return ui_to_api(json.loads(run_workflow.resolve(name).read_text()), run_workflow.local_spec(mapping))


def test_sd_workflows_run_on_the_toy_model_at_its_size(mapping):
    prompt = _api("regional_sdxl", mapping)
    run_workflow.point_at_checkpoint(prompt, None)
    types = {n["class_type"] for n in prompt.values()}
    assert "AttnLabToyModel" in types and "CheckpointLoaderSimple" not in types
    latent, = [n["inputs"] for n in prompt.values() if n["class_type"] == "EmptyLatentImage"]
    assert (latent["width"], latent["height"]) == (128, 128)
    offsets = sorted(n["inputs"]["x"] for n in prompt.values() if n["class_type"] == "MaskComposite")
    assert offsets == [0, 64], "mask layouts scale with the image"


def test_other_families_keep_their_tiny_model(mapping):
    prompt = _api("regional_flux", mapping)
    run_workflow.point_at_checkpoint(prompt, None)
    families = {n["inputs"].get("family") for n in prompt.values() if n["class_type"].startswith("AttnLabRunner")}
    assert families == {"flux"}


def test_checkpoint_replaces_the_toy_node(mapping, tmp_path):
    checkpoint = tmp_path / "my_model.safetensors"
    checkpoint.write_bytes(b"")
    prompt = _api(run_workflow.DEFAULT_WORKFLOW, mapping)
    run_workflow.point_at_checkpoint(prompt, str(checkpoint))
    loaders = [n for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple"]
    assert loaders and all(n["inputs"] == {"ckpt_name": "my_model.safetensors"} for n in loaders)
    assert not any(n["class_type"] == "AttnLabToyModel" for n in prompt.values())


def test_api_format_runs(tmp_path, mapping):
    wf = json.loads(run_workflow.resolve("temperature_sd15").read_text())
    path = tmp_path / "api.json"
    path.write_text(json.dumps(ui_to_api(wf, run_workflow.local_spec(mapping))))
    result = run_workflow.run(str(path), tmp_path / "out", steps=1)
    assert len([f for f in result.files if f.suffix == ".png"]) == 2


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}}), "'NoSuchNode', which neither"),
])
def test_broken_files_give_their_own_error(content, fragment, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(RunError, match=fragment):
        run_workflow.run(str(path), tmp_path)


def test_unknown_name_and_missing_checkpoint(tmp_path, capsys):
    assert run_workflow.main(["--workflow", "nope", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown workflow 'nope'; available:" in err[0] and "temperature_sd15" in err[0]
    with pytest.raises(RunError, match="checkpoint file not found"):
        run_workflow.run("temperature_sd15", tmp_path, checkpoint=str(tmp_path / "missing.safetensors"))


def test_failing_node_is_named(tmp_path):
    bad = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
           "2": {"class_type": "AttnLabInspect", "inputs": {"model": ["1", 0]}}}
    path = tmp_path / "wired_wrong.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(RunError, match=r"node 2 \(AttnLabInspect\)"):
        run_workflow.run(str(path), tmp_path)


class _FakeComfy(BaseHTTPRequestHandler):
    object_info: dict = {}
    submitted: list = []

    def _send(self, body: bytes, kind="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/object_info":
            return self._send(json.dumps(self.object_info).encode())
        if self.path.startswith("/history/"):
            out = {"9": {"images": [{"filename": "x.png", "subfolder": "", "type": "output"}]}}
            return self._send(json.dumps({"p1": {"outputs": out, "status": {"status_str": "success"}}}).encode())
        if self.path.startswith("/view?"):
            return self._send(b"\x89PNG fake", "image/png")
        self.send_error(404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.submitted.append(body["prompt"])
        self._send(json.dumps({"prompt_id": "p1"}).encode())

    def log_message(self, *args):
        pass


def test_server_mode_submits_polls_and_downloads(tmp_path, mapping):
    _FakeComfy.object_info = {name: {"input": cls.INPUT_TYPES()} for name, cls in mapping.items()
                              if name in ("CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
                                          "VAEDecode", "SaveImage", "AttnLabTemperature", "AttnLabInspect")}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeComfy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_workflow.run_on_server("temperature_sd15", tmp_path, url, steps=2)
    finally:
        server.shutdown()
        server.server_close()
    samplers = [n for n in _FakeComfy.submitted[-1].values() if n["class_type"] == "KSampler"]
    assert len(samplers) == 2 and all(n["inputs"]["steps"] == 2 for n in samplers)
    assert [f.name for f in result.files] == ["temperature_sd15_9_0.png"]
    assert result.files[0].read_bytes() == b"\x89PNG fake"
