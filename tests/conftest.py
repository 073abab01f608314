"""Test tiers: tests/pure runs on torch alone; tests/host needs the real ComfyUI host (found by tools.hostenv).

Without a host, the host tier is skipped with one loud line that says how to get one.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import hostenv  # noqa: E402

hostenv.register_pack()

HOST = hostenv.find_host()
if HOST is not None:
    hostenv.bootstrap()


def pytest_report_header(config):
    if HOST is None:
        return ["!!! HOST TIER SKIPPED: " + hostenv.HOW_TO_GET_HOST]
    return [f"ComfyUI host: {HOST} (version {hostenv.host_version(HOST)}), "
            f"attention backend: {'SDPA' if os.environ.get('ATTNLAB_SDPA') == '1' else 'host default'}"]


def pytest_terminal_summary(terminalreporter):
    if HOST is None:
        terminalreporter.write_line("!!! HOST TIER SKIPPED: " + hostenv.HOW_TO_GET_HOST, red=True, bold=True)


def pytest_collection_modifyitems(config, items):
    if HOST is not None:
        return
    skip = pytest.mark.skip(reason="no ComfyUI host: " + hostenv.HOW_TO_GET_HOST)
    for item in items:
        if "tests/host" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
