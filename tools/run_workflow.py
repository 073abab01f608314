"""The pack's main command: run a workflow headless through ComfyUI's real execution engine, write its images.

    python -m tools.run_workflow [--workflow NAME_OR_PATH] [--checkpoint PATH] [--out DIR] [--steps N]
                                 [--server URL] [--list] [-q]

Workflows in the UI format (File > Save) or the API format are accepted. Without ``--checkpoint``, SD1.5 and
SDXL checkpoint loaders are swapped for the pack's toy model (``AttnLabToyModel``: it really draws, 64x64 shapes),
and SD3, Flux and WAN loaders for a tiny random-weight model of that family built from the host's own classes
(their latents and text encoders differ from the toy's; their images are noise), so every shipped workflow runs
anywhere. With ``--checkpoint``, the workflow's checkpoint loader, or its toy model node, loads that file instead.
``--server`` submits the workflow to a running ComfyUI instead.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tools import hostenv
from tools.workflow_format import RunError, WorkflowError, is_ui_format, spec_from_input_types, ui_to_api

log = logging.getLogger("attnlab.run")
WORKFLOWS = hostenv.PACK_ROOT / "workflows"
DEFAULT_WORKFLOW = "toy_shapes"  # the showcase: regional prompts on the toy model
TOY_NODE = "AttnLabToyModel"
TOY_SIDE = 128  # Empty Latent Image size for the toy model's 16x16 latents (decoded to 64x64 images)
# loader class -> (widget naming the file, runner node standing in for it without a checkpoint)
LOADERS = {"CheckpointLoaderSimple": ("ckpt_name", "AttnLabRunnerTinyModel"),
           "UNETLoader": ("unet_name", "AttnLabRunnerTinyModel"),
           "CLIPLoader": ("clip_name", "AttnLabRunnerTinyCLIP"),
           "DualCLIPLoader": ("clip_name1", "AttnLabRunnerTinyCLIP"),
           "VAELoader": ("vae_name", "AttnLabRunnerTinyVAE")}
CHECKPOINT_LOADERS = {"CheckpointLoaderSimple": "ckpt_name"}
TINY_BY_NAME = (("sd3", "sd3"), ("flux", "flux"), ("wan", "wan21"))  # model-file-name fragment -> family
TINY_MAX_SIDE = 256  # the tiny model draws noise at any size: keep smoke runs quick


@dataclass
class RunResult:
    files: list[Path] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    seconds: float = 0.0


# -- finding and reading workflows ----------------------------------------------------------------------------
def available() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def resolve(workflow: str) -> Path:
    path = Path(workflow)
    if path.suffix == ".json" and path.is_file():
        return path
    named = WORKFLOWS / f"{workflow}.json"
    if named.is_file():
        return named
    raise RunError(f"unknown workflow '{workflow}'; available: {', '.join(available())}")


def read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} holds no workflow (expected a JSON object)")
    return data


# -- the runner-only tiny loader ------------------------------------------------------------------------------
class RunnerTinyModel:
    """Runner-only node (never registered by the pack): a tiny random-weight MODEL, CLIP and VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        from tools.tiny_models import BUNDLES
        return {"required": {"family": (list(BUNDLES),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "attention_lab/testing"

    def load(self, family):
        from tools.tiny_models import tiny_bundle
        return tiny_bundle(family, seed=0)


class RunnerTinyCLIP(RunnerTinyModel):
    """Runner-only: the tiny bundle's CLIP alone (stands in for CLIP loaders)."""

    RETURN_TYPES = ("CLIP",)

    def load(self, family):
        return (super().load(family)[1],)


class RunnerTinyVAE(RunnerTinyModel):
    """Runner-only: the tiny bundle's VAE alone (stands in for VAE loaders)."""

    RETURN_TYPES = ("VAE",)

    def load(self, family):
        return (super().load(family)[2],)


RUNNER_NODES = {"AttnLabRunnerTinyModel": RunnerTinyModel, "AttnLabRunnerTinyCLIP": RunnerTinyCLIP,
                "AttnLabRunnerTinyVAE": RunnerTinyVAE}


def tiny_family_for(prompt: dict) -> str:
    """The tiny family standing in for the workflow's model, from its model file names."""
    names = " ".join(str(n["inputs"].get(LOADERS[n["class_type"]][0], "")) for n in prompt.values()
                     if n["class_type"] in ("CheckpointLoaderSimple", "UNETLoader")).lower()
    return next((family for fragment, family in TINY_BY_NAME if fragment in names), "sd15")  # else SD1.5


def load_host_nodes():
    """The host's node registry with core extras, this pack and the runner's tiny loader; returns the mapping."""
    import nodes

    if "PerturbedAttentionGuidance" not in nodes.NODE_CLASS_MAPPINGS:  # a comfy_extras node: extras not loaded
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if "AttnLabTemperature" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.load_custom_node(str(hostenv.PACK_ROOT), ignore=set(nodes.NODE_CLASS_MAPPINGS)))
    for name, cls in RUNNER_NODES.items():
        nodes.NODE_CLASS_MAPPINGS.setdefault(name, cls)
    return nodes.NODE_CLASS_MAPPINGS


def local_spec(mapping):
    def spec(class_type):
        cls = mapping.get(class_type)
        return None if cls is None else spec_from_input_types(cls.INPUT_TYPES())
    return spec


def to_api(workflow: dict, spec) -> dict:
    try:
        return ui_to_api(workflow, spec) if is_ui_format(workflow) else workflow
    except WorkflowError as e:
        raise RunError(str(e)) from None


# -- preparing the prompt -------------------------------------------------------------------------------------
def point_at_checkpoint(prompt: dict, checkpoint: str | None) -> None:
    """Use the user's checkpoint file, or swap model loaders for the toy or tiny models when none is given."""
    if checkpoint is None:
        use_tiny_models(prompt)
        return
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise RunError(f"checkpoint file not found: {path}")
    import folder_paths
    folder_paths.add_model_folder_path("checkpoints", str(path.parent.resolve()), is_default=True)
    for node in prompt.values():
        if node["class_type"] == TOY_NODE:
            node.update(class_type="CheckpointLoaderSimple", inputs={})
        if node["class_type"] in CHECKPOINT_LOADERS:
            node["inputs"][CHECKPOINT_LOADERS[node["class_type"]]] = path.name


def use_tiny_models(prompt: dict) -> None:
    """SD1.5/SDXL checkpoint loaders -> the toy model at its native size; other families -> tiny models."""
    loaders = [n for n in prompt.values() if n["class_type"] in LOADERS]
    if not loaders:
        return
    family = tiny_family_for(prompt)
    if family == "sd15" and all(n["class_type"] in CHECKPOINT_LOADERS for n in loaders):
        for node in loaders:
            node.update(class_type=TOY_NODE, inputs={})
        log.warning("no --checkpoint given: running on the pack's toy model (sizes scaled to %dpx: 16x16 latents, 64x64 images)",
                    TOY_SIDE)
        scale_sizes(prompt, TOY_SIDE)
        return
    for node in loaders:
        node.update(class_type=LOADERS[node["class_type"]][1], inputs={"family": family})
    log.warning("no --checkpoint given: running on a tiny random-weight %s model (images are noise, sizes scaled "
                "to %dpx, videos at 9 frames)", family, TINY_MAX_SIDE)
    scale_sizes(prompt, TINY_MAX_SIDE)


SIZE_KEYS = ("width", "height")
OFFSET_KEYS = ("x", "y")  # mask and image composites: scaled with the sizes so layouts keep their geometry


def scale_sizes(prompt: dict, side: int, frames: int = 9) -> None:
    """Scale every width/height (to multiples of 8) and composite offset so the largest side is ``side``; cap
    video lengths at ``frames``."""
    sizes = [v for n in prompt.values() for k, v in n["inputs"].items() if k in SIZE_KEYS and isinstance(v, int)]
    factor = min(1.0, side / max(sizes)) if sizes else 1.0
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if key in SIZE_KEYS:
                inputs[key] = max(8, round(value * factor / 8) * 8)
            elif key in OFFSET_KEYS:
                inputs[key] = round(value * factor)
            elif key == "length":
                inputs[key] = min(value, frames)


def override_steps(prompt: dict, steps: int | None) -> None:
    for node in prompt.values():
        if steps is not None and isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = steps


def check_types(prompt: dict, mapping) -> None:
    for node_id, node in prompt.items():
        if node["class_type"] not in mapping:
            raise RunError(f"node {node_id} has type '{node['class_type']}', which neither the host nor the "
                           "installed packs provide")


# -- running locally ------------------------------------------------------------------------------------------
class _Server:
    """What PromptExecutor needs of the server: events are logged as progress instead of sent."""

    client_id = "attnlab-run"
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self, prompt: dict):
        self.prompt = prompt

    def send_sync(self, event, data, sid=None):
        node = data.get("node") if isinstance(data, dict) else None
        if event == "executing" and node is not None:
            log.info("node %s (%s)", node, self.prompt.get(str(node), {}).get("class_type", "?"))
        elif event == "execution_cached" and data.get("nodes"):
            log.info("cached: nodes %s", ", ".join(map(str, data["nodes"])))

    def queue_updated(self):
        pass


def _step_hook(value, total, preview=None, node_id=None):
    log.info("  step %d/%d", value, total)


def _validate(prompt: dict) -> list:
    import execution
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    if node_errors:
        node_id, info = next(iter(node_errors.items()))
        first = info["errors"][0]
        detail = first.get("details") or first.get("message")
        raise RunError(f"node {node_id} ({info.get('class_type')}) is invalid: {detail}")
    if not valid:
        raise RunError(f"the workflow is invalid: {error.get('message')}: {error.get('details')}")
    return outputs


def _failure(executor) -> str:
    for event, data in executor.status_messages:
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {str(data.get('exception_message')).strip()}")
    return "the workflow did not finish"


def execute_locally(prompt: dict) -> dict:
    import comfy.utils
    import execution

    outputs = _validate(prompt)
    executor = execution.PromptExecutor(_Server(prompt), cache_type=execution.CacheType.CLASSIC)
    comfy.utils.set_progress_bar_global_hook(_step_hook)
    executor.execute(json.loads(json.dumps(prompt)), str(uuid.uuid4()), extra_data={"client_id": _Server.client_id},
                     execute_outputs=outputs)
    if not executor.success:
        raise RunError(_failure(executor))
    return executor.history_result["outputs"]


def collect(outputs: dict, out_dir: Path, stem: str, fetch) -> list[Path]:
    """Write each output node's images and texts into ``out_dir``; ``fetch(image_ref, dest)`` copies one image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for node_id, ui in sorted(outputs.items()):
        for i, ref in enumerate(ui.get("images", [])):
            dest = out_dir / f"{stem}_{node_id}_{i}{Path(ref['filename']).suffix or '.png'}"
            fetch(ref, dest)
            files.append(dest)
        if ui.get("text"):
            dest = out_dir / f"{stem}_{node_id}.txt"
            dest.write_text("\n".join(map(str, ui["text"])))
            files.append(dest)
    return files


def _copy_local(ref: dict, dest: Path) -> None:
    import folder_paths
    base = folder_paths.get_output_directory() if ref.get("type", "output") == "output" else \
        folder_paths.get_temp_directory()
    shutil.copyfile(Path(base) / ref.get("subfolder", "") / ref["filename"], dest)


def run(workflow: str, out_dir, checkpoint: str | None = None, steps: int | None = None) -> RunResult:
    """Run ``workflow`` (a name in workflows/ or a path) locally; returns the files written."""
    start = time.perf_counter()
    path = resolve(workflow)
    data = read(path)
    _bootstrap()
    mapping = load_host_nodes()
    prompt = to_api(data, local_spec(mapping))
    check_types(prompt, mapping)
    point_at_checkpoint(prompt, checkpoint)
    override_steps(prompt, steps)
    outputs = execute_locally(prompt)
    files = collect(outputs, Path(out_dir), path.stem, _copy_local)
    return RunResult(files, outputs, time.perf_counter() - start)


def _bootstrap() -> None:
    try:
        hostenv.bootstrap()
    except RuntimeError as e:
        raise RunError(str(e)) from None


# -- running on a server --------------------------------------------------------------------------------------
def run_on_server(workflow: str, out_dir, server: str, steps: int | None = None, timeout: float = 600) -> RunResult:
    """Submit ``workflow`` to a running ComfyUI at ``server`` and download its images."""
    from tools import server_client

    start = time.perf_counter()
    path = resolve(workflow)
    client = server_client.Client(server)
    data = read(path)
    prompt = to_api(data, client.input_spec()) if is_ui_format(data) else data
    override_steps(prompt, steps)
    outputs = client.run(prompt, timeout)
    files = collect(outputs, Path(out_dir), path.stem, client.download)
    return RunResult(files, outputs, time.perf_counter() - start)


# -- command line ---------------------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.run_workflow", description=__doc__.split("\n\n")[0])
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW, help=f"a name in workflows/ or a path (default "
                   f"{DEFAULT_WORKFLOW})")
    p.add_argument("--out", default="out", help="folder for the images (default ./out)")
    p.add_argument("--checkpoint", help="run on this checkpoint file instead of the toy model (or a tiny random-weight one)")
    p.add_argument("--steps", type=int, help="override every sampler's step count")
    p.add_argument("--server", help="submit to a running ComfyUI at this URL instead of running here")
    p.add_argument("--list", action="store_true", help="list the shipped workflows and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="%(message)s",
                        stream=sys.stderr)
    log.setLevel(logging.ERROR if args.quiet else logging.INFO)
    if args.list:
        sys.stdout.write("\n".join(available()) + "\n")
        return 0
    try:
        if args.server:
            result = run_on_server(args.workflow, args.out, args.server, args.steps)
        else:
            result = run(args.workflow, args.out, args.checkpoint, args.steps)
    except (RunError, OSError) as e:
        sys.stderr.write(f"run_workflow: error: {e}\n")
        return 1
    log.info("wrote %d files to %s in %.1f s", len(result.files), args.out, result.seconds)
    for f in result.files:
        sys.stdout.write(f"{f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
