"""Find the ComfyUI host and bootstrap it headless (CPU, no downloads, writable dirs in a temp folder).

Used by the test suite, the benchmarks and the workflow runner. Importing this module has no side effects;
call :func:`bootstrap` before any ``comfy.*`` import.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("attnlab.hostenv")

PACK_ROOT = Path(__file__).resolve().parent.parent
PINNED_HOST_VERSION = "v0.3.64"
HOST_REPO = "https://github.com/comfyanonymous/ComfyUI"

HOW_TO_GET_HOST = (
    "No ComfyUI host found. Set COMFYUI_PATH to a ComfyUI checkout, put this pack inside "
    "ComfyUI/custom_nodes, or clone one to ~/comfy/ComfyUI: "
    f"git clone --depth 1 --branch {PINNED_HOST_VERSION} {HOST_REPO} ~/comfy/ComfyUI"
)


def candidate_host_dirs() -> list[Path]:
    """The places searched for the host, in order: $COMFYUI_PATH, two folders up, ~/comfy/ComfyUI."""
    found = []
    env = os.environ.get("COMFYUI_PATH")
    if env:
        found.append(Path(env).expanduser())
    found.append(PACK_ROOT.parent.parent)
    found.append(Path("~/comfy/ComfyUI").expanduser())
    return found


def find_host() -> Path | None:
    """The first candidate that holds a ComfyUI checkout, or None."""
    for d in candidate_host_dirs():
        if (d / "comfy" / "model_patcher.py").is_file() and (d / "nodes.py").is_file():
            return d.resolve()
    return None


def host_version(host: Path) -> str:
    text = (host / "comfyui_version.py").read_text() if (host / "comfyui_version.py").exists() else ""
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


_BOOTED: dict = {}


def bootstrap(sdpa: bool | None = None, base_directory: str | None = None) -> Path:
    """Put the host on sys.path and configure it for headless CPU use; idempotent. Returns the host dir.

    ``sdpa`` picks PyTorch SDPA attention (what NVIDIA users get) instead of the CPU default sub-quadratic
    backend; None reads ATTNLAB_SDPA=1 from the environment.
    """
    if _BOOTED:
        return _BOOTED["host"]
    host = find_host()
    if host is None:
        raise RuntimeError(HOW_TO_GET_HOST)
    sys.dont_write_bytecode = True
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import utils.extra_config  # noqa: F401  the host's own package, imported first as its main.py does (a comfy
    # module later puts comfy/ on sys.path, whose utils.py would shadow it for server.py)
    from comfy.cli_args import args  # noqa: E402  (must precede comfy.model_management)

    import torch
    args.cpu = not torch.cuda.is_available() or os.environ.get("ATTNLAB_CPU") == "1"
    args.disable_all_custom_nodes = True
    args.disable_api_nodes = True
    if sdpa is None:
        sdpa = os.environ.get("ATTNLAB_SDPA") == "1"
    args.use_pytorch_cross_attention = bool(sdpa)
    base = base_directory or tempfile.mkdtemp(prefix="attnlab-host-")
    args.base_directory = base
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    _BOOTED["host"] = host
    _BOOTED["base"] = base
    log.info("ComfyUI %s at %s (base directory %s)", host_version(host), host, base)
    return host


def base_directory() -> str:
    return _BOOTED["base"]


PACKAGE = "attention_lab"


def register_pack():
    """Import the pack root as the package ``attention_lab`` (its folder name varies; its ``nodes`` would clash
    with the host's own ``nodes`` module at top level). Returns the package module."""
    import importlib.util

    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module
