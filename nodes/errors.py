"""Errors users read: the node, the input, what is wrong, and the fix."""
from __future__ import annotations


def node_error(node_id: str, input_name: str, problem: str, fix: str) -> ValueError:
    """A ValueError that names the node, the input, the problem and the fix."""
    return ValueError(f"{node_id}: input '{input_name}': {problem}. Fix: {fix}.")
