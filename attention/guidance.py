"""Attention perturbations for guidance (PAG, SEG, skip-layer), and the guidance arithmetic.

PAG: Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance" (self-attention
map replaced by the identity, so each token returns its own value). SEG: Hong 2024, "Smoothed Energy Guidance"
(queries blurred by a Gaussian over the token grid; infinite sigma gives the mean query). NAG: Chen et al. 2025,
"Normalized Attention Guidance" (extrapolate the attention output away from the negative context's, clip by a
norm ratio, blend). Rescale: Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .effect import AttnCall, Effect
from .layout import bhnd_to_bnhd
from .schedule import Schedule
from .site import JOINT, SELF, Site, image_rows


def gaussian_kernel_1d(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """size-tap normalised Gaussian over [-(size-1)/2, (size-1)/2], in ``like``'s dtype and device."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return (pdf / pdf.sum()).to(device=like.device, dtype=like.dtype)


def blur_grid(x: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """x: b h (gh gw) d -> same, Gaussian-blurred over the gh x gw token grid (separable, reflect padded);
    sigma = inf gives the mean over the grid (SEG)."""
    b, h, n, d = x.shape
    gh, gw = grid
    if gh * gw != n:
        raise ValueError(f"token count {n} does not fill the {gh}x{gw} grid")
    if math.isinf(sigma):
        return x.mean(dim=2, keepdim=True).expand_as(x)
    img = x.permute(0, 1, 3, 2).reshape(b * h * d, 1, gh, gw)
    r = max(1, math.ceil(3 * sigma))
    kernel = gaussian_kernel_1d(2 * r + 1, sigma, x)
    img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    img = F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1))
    return img.reshape(b, h, d, n).permute(0, 1, 3, 2)


def nag(pos: torch.Tensor, neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    """pos/neg: b n c attention outputs for the positive and negative context -> b n c (NAG, Chen et al. 2025):
    extrapolate by ``scale``, clip the L1-norm ratio to ``tau``, blend with ``alpha``. Written so that
    pos == neg returns pos exactly."""
    guided = pos + (scale - 1) * (pos - neg)
    norm_pos = pos.abs().sum(dim=-1, keepdim=True).clamp_min(1e-6)
    ratio = guided.abs().sum(dim=-1, keepdim=True) / norm_pos
    guided = torch.where(ratio > tau, guided * (tau / ratio.clamp_min(1e-6)), guided)
    return pos + alpha * (guided - pos)


def rescale(guided: torch.Tensor, reference: torch.Tensor, factor: float) -> torch.Tensor:
    """guided/reference: b c ... -> b c ...: match the per-item std of ``reference``, blended by ``factor``."""
    if factor == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    std_ref = reference.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return factor * guided * (std_ref / std_guided) + (1 - factor) * guided


# -- perturbation effects: each applies only to the batch chunks of its own guidance pass ----------------------
GUIDANCE_CHUNKS = "guidance_chunks"  # Site.extras key: per chunk, the Perturbation it runs (or None)


class Perturbation(Effect):
    """An attention perturbation for guidance: result = cfg + scale * (cond - perturbed) (+ rescale).

    It changes attention only in the extra batch chunks the guidance runner adds for it, never in the ordinary
    cond/uncond chunks, so several perturbations share one batched model call.
    """

    supported_kinds = frozenset({SELF, JOINT})

    def __init__(self, schedule: Schedule, scale: float, rescale: float = 0.0):
        super().__init__(schedule)
        self.scale, self.rescale_factor = float(scale), float(rescale)

    @property
    def neutral(self) -> bool:
        return self.scale == 0.0

    def runs_in(self, plan) -> bool:
        return plan is not None and self in plan

    def items(self, site: Site) -> tuple[bool, ...] | None:
        """Batch items this perturbation changes at ``site``: the chunks whose label the plan maps to it."""
        plan = site.extras.get(GUIDANCE_CHUNKS)
        if not plan:
            return None
        picked = tuple(c < len(plan) and plan[c] is self for c in site.chunks)
        if not any(picked):
            return None
        return tuple(p for p in picked for _ in range(site.batch_per_chunk))

    def applies(self, site: Site) -> bool:
        return self.items(site) is not None and super().applies(site)

    def guide(self, denoised: torch.Tensor, cond: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """denoised/cond/perturbed: b c ... -> b c ...: add this perturbation's guidance term."""
        guided = denoised + self.scale * (cond - perturbed)
        return rescale(guided, cond, self.rescale_factor)

    def settings(self) -> str:
        return f"scale={self.scale:g} rescale={self.rescale_factor:g}"


def item_mask(items: tuple[bool, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(items, device=like.device).view(-1, *([1] * (like.ndim - 1)))


class PAG(Perturbation):
    """Perturbed-Attention Guidance (Ahn et al. 2024): image self-attention replaced by the identity map."""

    node_id = "AttnLabPAG"

    def attend(self, call: AttnCall, site: Site, inner) -> torch.Tensor:
        out = inner(call)
        rows = image_rows(site)
        values = bhnd_to_bnhd(call.v)[:, rows]
        mask = item_mask(self.items(site), out)
        out = out.clone()
        out[:, rows] = torch.where(mask, values.to(out.dtype), out[:, rows])
        return out


class SEG(Perturbation):
    """Smoothed Energy Guidance (Hong 2024): image queries blurred by a Gaussian over the token grid."""

    node_id = "AttnLabSEG"

    def __init__(self, schedule: Schedule, scale: float, blur_sigma: float, rescale: float = 0.0):
        super().__init__(schedule, scale, rescale)
        self.blur_sigma = float(blur_sigma)

    def pre(self, call: AttnCall, site: Site) -> AttnCall:
        frames, gh, gw = site.layout.grid
        rows = image_rows(site)
        q_img = call.q[:, :, rows]
        if q_img.shape[2] != frames * gh * gw:
            return call  # merged or extra tokens: no grid to blur on
        b, h, n, d = q_img.shape
        per_frame = q_img.reshape(b, h * frames, gh * gw, d) if frames > 1 else q_img
        blurred = blur_grid(per_frame, (gh, gw), self.blur_sigma).reshape(b, h, n, d)
        q = call.q.clone()
        q[:, :, rows] = torch.where(item_mask(self.items(site), q_img), blurred, q_img)
        return call.with_(q=q)

    def settings(self) -> str:
        return f"{super().settings()} blur_sigma={self.blur_sigma:g}"


class SkipAttention(Perturbation):
    """Skip-layer guidance on attention: the selected blocks' attention contributes nothing (output zero)."""

    node_id = "AttnLabSkipLayerGuidance"
    supported_kinds = frozenset({SELF, JOINT})

    def attend(self, call: AttnCall, site: Site, inner) -> torch.Tensor:
        out = inner(call)
        return torch.where(item_mask(self.items(site), out), torch.zeros_like(out), out)
