# Shared set-up for scripts/demo and scripts/test (sourced, from the repo root). Idempotent and quick when done.
# Exports PY (the venv's python) and COMFYUI_PATH (the host).
set -euo pipefail
ATTNLAB_VENV="${ATTNLAB_VENV:-$HOME/.cache/attnlab/venv}"
PINNED_HOST="v0.3.64"
HOST_URL="https://github.com/comfyanonymous/ComfyUI"

say() { printf 'attnlab setup: %s\n' "$*" >&2; }

find_host() {
  for d in "${COMFYUI_PATH:-}" "$PWD/../.." "$HOME/comfy/ComfyUI"; do
    if [ -n "$d" ] && [ -f "$d/comfy/model_patcher.py" ] && [ -f "$d/nodes.py" ]; then
      (cd "$d" && pwd); return 0
    fi
  done
  return 1
}

ensure_venv() {
  if [ ! -x "$ATTNLAB_VENV/bin/python" ]; then
    say "creating a virtual environment at $ATTNLAB_VENV"
    python3 -m venv "$ATTNLAB_VENV"
  fi
  PY="$ATTNLAB_VENV/bin/python"
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    say "installing torch and torchvision"
    "$PY" -m pip install -q torch torchvision
  fi
}

ensure_host() {
  if COMFYUI_PATH="$(find_host)"; then return 0; fi
  if command -v git >/dev/null && git clone -q --depth 1 --branch "$PINNED_HOST" "$HOST_URL" "$HOME/comfy/ComfyUI" 2>/dev/null; then
    COMFYUI_PATH="$HOME/comfy/ComfyUI"; return 0
  fi
  say "no ComfyUI host found and none could be cloned. Provide one: set COMFYUI_PATH to a ComfyUI checkout,"
  say "put this pack in ComfyUI/custom_nodes, or clone $HOST_URL (tag $PINNED_HOST) to ~/comfy/ComfyUI."
  exit 1
}

ensure_host_requirements() {
  local stamp="$ATTNLAB_VENV/.attnlab-host-reqs-v2-$(sha1sum "$COMFYUI_PATH/requirements.txt" | cut -c1-12)"
  [ -f "$stamp" ] && return 0
  say "installing the host's requirements"
  # torch comes from ensure_venv; torchaudio would pull another torch; the front-end packages are not needed
  grep -v -E '^(torch|torchvision|torchaudio|comfyui-frontend-package|comfyui-workflow-templates|comfyui-embedded-docs)\b' \
    "$COMFYUI_PATH/requirements.txt" > "$ATTNLAB_VENV/host-requirements.txt"
  echo requests >> "$ATTNLAB_VENV/host-requirements.txt"  # the host's server (image and video save nodes) needs it
  "$PY" -m pip install -q -r "$ATTNLAB_VENV/host-requirements.txt"
  touch "$stamp"
}

ensure_venv
ensure_host
ensure_host_requirements
export PY COMFYUI_PATH
