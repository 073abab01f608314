"""Self-Attention Guidance (Hong et al. 2023): the uncond chunk's attention mass marks what to blur."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .effect import AttnCall, Effect
from .guidance import gaussian_kernel_1d
from .schedule import Schedule
from .site import JOINT, SELF, Site, image_rows


STEP_STATE = "step_state"  # Site.extras key: the StepState of the current sampling step


class StepState:
    """What effects record during a step's main model call for its post-CFG term. Not a dict: the host copies
    nested dicts of transformer_options per call, and records must reach the original."""

    def __init__(self):
        self.records: dict = {}


def blur_latent(x: torch.Tensor, sigma: float, size: int = 9) -> torch.Tensor:
    """x: b c h w -> b c h w, Gaussian-blurred per channel (reflect padded)."""
    k1 = gaussian_kernel_1d(size, sigma, x)
    kernel = torch.mm(k1[:, None], k1[None, :]).expand(x.shape[1], 1, size, size)
    pad = size // 2
    return F.conv2d(F.pad(x, [pad, pad, pad, pad], mode="reflect"), kernel, groups=x.shape[1])


class SAG(Effect):
    """Self-Attention Guidance (Hong et al. 2023): where the uncond chunk's self-attention concentrates (keys that
    receive more than ``threshold`` attention in total), the uncond prediction is blurred, re-noised and predicted
    again; the result is pushed away from that prediction."""

    node_id = "AttnLabSAG"
    supported_kinds = frozenset({SELF, JOINT})

    def __init__(self, schedule: Schedule, scale: float = 0.5, blur_sigma: float = 2.0, threshold: float = 1.0):
        super().__init__(schedule)
        self.scale, self.blur_sigma, self.threshold = float(scale), float(blur_sigma), float(threshold)

    @property
    def neutral(self) -> bool:
        return self.scale == 0.0

    def runs_in(self, plan) -> bool:
        return plan is not None  # only in the sampler's main call, whose step state reaches the post-CFG term

    def applies(self, site: Site) -> bool:
        return 1 in site.chunks and site.extras.get(STEP_STATE) is not None and super().applies(site)

    def attend(self, call: AttnCall, site: Site, inner) -> torch.Tensor:
        """Records the uncond items' key attention mass (explicit maps, query-chunked); the output itself comes
        from the inner effects and the host's kernel, so SAG composes with the rest of the stack."""
        from .maps import key_attention_mass
        uncond = [i for i, c in enumerate(site.chunks) for _ in range(site.batch_per_chunk) if c == 1]
        bias = call.bias[uncond] if call.bias is not None and call.bias.shape[0] > 1 else call.bias
        mass = key_attention_mass(call.q[uncond], call.k[uncond], bias)
        site.extras[STEP_STATE].records[self] = (mass[:, image_rows(site, keys=True)], site.layout.grid)
        return inner(call)

    def degrade(self, x0: torch.Tensor, recorded) -> torch.Tensor:
        """x0: b c h w (or b c t h w) uncond prediction -> same, blurred where the recorded attention concentrates."""
        scores, grid = recorded
        size = x0.shape[2:]
        mask = (scores > self.threshold).reshape(-1, 1, *grid[-len(size):]).to(x0.dtype)
        mask = F.interpolate(mask, size)
        return self._blur(x0) * mask + x0 * (1 - mask)

    def _blur(self, x0: torch.Tensor) -> torch.Tensor:
        if x0.ndim == 4:
            return blur_latent(x0, self.blur_sigma)
        b, c, t, h, w = x0.shape
        frames = blur_latent(x0.movedim(2, 1).reshape(b * t, c, h, w), self.blur_sigma)
        return frames.reshape(b, t, c, h, w).movedim(1, 2)

    def settings(self) -> str:
        return f"scale={self.scale:g} blur_sigma={self.blur_sigma:g}"
