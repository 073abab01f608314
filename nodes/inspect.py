"""AttnLabInspect: list a model's attention sites and the effects stacked on it, as text."""
from __future__ import annotations

from comfy_api.latest import io, ui

from .host import effect_stack, family_of
from .sites import SiteInfo, model_sites

NODE_ID = "AttnLabInspect"


def _site_line(site: SiteInfo) -> str:
    tokens = f"{site.image_tokens} image tokens" if site.image_tokens is not None else "image tokens: ?"
    text = " + text" if site.text_tokens else ""
    return f"  {str(site.address):<12} {'+'.join(site.kinds):<12} {site.heads} heads x {site.head_dim:<5} {tokens}{text}"


def inspect_text(model, latent: dict | None) -> str:
    """The report AttnLabInspect shows: family, sites with kinds, heads and token counts, and the stack."""
    family = family_of(model, NODE_ID)
    shape = tuple(latent["samples"].shape) if latent is not None else None
    size = f", latent {'x'.join(map(str, shape[2:]))}" if shape else ""
    sites = model_sites(model, family, shape)
    lines = [f"Attention Lab: {family.label} model{size}, {len(sites)} attention sites",
             "  address      kinds        heads x dim   tokens"]
    lines += [_site_line(s) for s in sites]
    lines.append(f"Block groups for 'blocks': {', '.join(dict.fromkeys(s.address.group for s in sites))}")
    stack = effect_stack(model).describe()
    lines.append("Effects stacked on this MODEL, in order:")
    lines += ["  " + line for line in stack] or ["  (none)"]
    return "\n".join(lines)


class AttnLabInspect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_ID,
            display_name="Attention Inspect",
            category="attention_lab",
            description="Lists the model's attention sites (address, kind, heads, tokens for the given latent) and "
                        "the Attention Lab effects stacked on it, in order: what you read to write a 'blocks' "
                        "selector.",
            inputs=[
                io.Model.Input("model", tooltip="The model to inspect (with any Attention Lab effects on it)."),
                io.Latent.Input("latent", optional=True,
                                tooltip="A latent of the size you will sample, for token counts per site."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The same report as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, latent=None) -> io.NodeOutput:
        text = inspect_text(model, latent)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
