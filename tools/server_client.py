"""A minimal client of ComfyUI's HTTP API (urllib only): submit a prompt, wait for it, download its images."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from tools.workflow_format import RunError, spec_from_input_types


class Client:
    def __init__(self, base_url: str, poll_seconds: float = 0.25):
        self.base = base_url.rstrip("/")
        self.poll = poll_seconds
        self._object_info = None

    def _get(self, path: str, timeout: float = 30):
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                return r.read()
        except (urllib.error.URLError, OSError) as e:
            raise RunError(f"the ComfyUI server at {self.base} did not answer {path}: {e}") from None

    def input_spec(self):
        """class_type -> [(name, spec)] from the server's /object_info (None for unknown types)."""
        if self._object_info is None:
            self._object_info = json.loads(self._get("/object_info"))

        def spec(class_type):
            info = self._object_info.get(class_type)
            return None if info is None else spec_from_input_types(info.get("input", {}))
        return spec

    def submit(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
        request = urllib.request.Request(self.base + "/prompt", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            raise RunError(f"the server refused the workflow: {e.read().decode(errors='replace')[:500]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise RunError(f"the ComfyUI server at {self.base} did not answer /prompt: {e}") from None

    def wait(self, prompt_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = json.loads(self._get(f"/history/{prompt_id}"))
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise RunError(f"the workflow failed on the server: {status.get('messages')}")
                return entry.get("outputs", {})
            time.sleep(self.poll)
        raise RunError(f"the server did not finish prompt {prompt_id} within {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float) -> dict:
        return self.wait(self.submit(prompt), timeout)

    def download(self, ref: dict, dest: Path) -> None:
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        dest.write_bytes(self._get(f"/view?{query}"))
