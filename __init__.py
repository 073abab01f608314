"""Attention Lab: training-free attention control for ComfyUI, as one ordered, composable stack of effects.

The host finds the nodes through ``comfy_entrypoint`` (V3). Nothing is imported from the host until it calls it.
"""
WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes.extension import AttentionLabExtension

    return AttentionLabExtension()
