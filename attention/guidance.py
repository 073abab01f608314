"""Attention perturbations for guidance, and the guidance arithmetic.

PAG: Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance" (self-attention
map replaced by the identity, so each token returns its own value). SEG: Hong 2024, "Smoothed Energy Guidance"
(queries blurred by a Gaussian over the token grid; infinite sigma gives the mean query). NAG: Chen et al. 2025,
"Normalized Attention Guidance" (extrapolate the attention output away from the negative context's, clip by a
norm ratio, blend). Rescale: Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .effect import AttnCall, Effect
from .layout import bhnd_to_bnhd
from .schedule import Schedule
from .site import CROSS, JOINT, SELF, Site


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


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
    kernel = _gaussian_kernel(sigma, x.device, x.dtype)
    r = kernel.numel() // 2
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


def _item_mask(items: tuple[bool, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(items, device=like.device).view(-1, *([1] * (like.ndim - 1)))


def _image_rows(site: Site) -> slice:
    span = site.layout.img_q
    return span.as_slice() if span is not None else slice(None)


class PAG(Perturbation):
    """Perturbed-Attention Guidance (Ahn et al. 2024): image self-attention replaced by the identity map."""

    node_id = "AttnLabPAG"

    def attend(self, call: AttnCall, site: Site, inner) -> torch.Tensor:
        out = inner(call)
        rows = _image_rows(site)
        values = bhnd_to_bnhd(call.v)[:, rows]
        mask = _item_mask(self.items(site), out)
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
        rows = _image_rows(site)
        q_img = call.q[:, :, rows]
        if q_img.shape[2] != frames * gh * gw:
            return call  # merged or extra tokens: no grid to blur on
        b, h, n, d = q_img.shape
        per_frame = q_img.reshape(b, h * frames, gh * gw, d) if frames > 1 else q_img
        blurred = blur_grid(per_frame, (gh, gw), self.blur_sigma).reshape(b, h, n, d)
        q = call.q.clone()
        q[:, :, rows] = torch.where(_item_mask(self.items(site), q_img), blurred, q_img)
        return call.with_(q=q)

    def settings(self) -> str:
        return f"{super().settings()} blur_sigma={self.blur_sigma:g}"


class SkipAttention(Perturbation):
    """Skip-layer guidance on attention: the selected blocks' attention contributes nothing (output zero)."""

    node_id = "AttnLabSkipLayerGuidance"
    supported_kinds = frozenset({SELF, JOINT})

    def attend(self, call: AttnCall, site: Site, inner) -> torch.Tensor:
        out = inner(call)
        return torch.where(_item_mask(self.items(site), out), torch.zeros_like(out), out)


@dataclass(frozen=True)
class NegativeChunk:
    """Plan entry: a chunk that carries ``effect``'s negative context, kept in lockstep with the cond chunk."""

    effect: "NAG"


class NAG(Effect):
    """Normalized Attention Guidance (Chen et al. 2025): in cross-attention (and the image rows of joint
    attention) the positive output is extrapolated away from the output for a negative context, norm-clipped
    by ``tau`` and blended by ``alpha``. Gives distilled and few-step models at cfg 1 a negative prompt.

    The negative context rides in a companion chunk of the same batch; at every site the companion's image
    tokens are set to the cond's, so its hidden state follows the cond exactly and only its text differs.
    """

    node_id = "AttnLabNAG"
    supported_kinds = frozenset({CROSS, JOINT})

    def __init__(self, schedule: Schedule, negative_context: torch.Tensor, scale: float = 5.0, tau: float = 2.5,
                 alpha: float = 0.25):
        super().__init__(schedule)
        self.negative_context = negative_context
        self.scale, self.tau, self.alpha = float(scale), float(tau), float(alpha)

    @property
    def neutral(self) -> bool:
        return self.scale == 1.0 or self.alpha == 0.0

    def runs_in(self, plan) -> bool:
        return plan is not None and NegativeChunk(self) in plan

    def may_apply(self, block, kind) -> bool:
        return True  # every site: the companion chunk must follow the cond everywhere

    def applies(self, site: Site) -> bool:
        return not self.neutral and bool(self.pairs(site))

    def pairs(self, site: Site) -> list[tuple[int, int]]:
        """(cond item, companion item) batch index pairs at ``site``."""
        plan, bpc = site.extras.get(GUIDANCE_CHUNKS) or (), site.batch_per_chunk
        chunks = list(site.chunks)
        if 0 not in chunks:
            return []
        mine = [i for i, c in enumerate(chunks) if c < len(plan) and plan[c] == NegativeChunk(self)]
        if not mine:
            return []
        cond, neg = chunks.index(0), mine[0]
        return [(cond * bpc + j, neg * bpc + j) for j in range(bpc)]

    def attend(self, call: AttnCall, site: Site, inner) -> torch.Tensor:
        pairs = self.pairs(site)
        if not pairs:
            return inner(call)
        cond, neg = (list(t) for t in zip(*pairs))
        guide = site.kind in self.supported_kinds and self.schedule.matches(site)
        out = self._guided(call, site, cond, neg, inner) if guide else inner(call).clone()
        rows = _image_rows(site) if site.kind == JOINT else slice(None)
        out[neg, rows] = out[cond, rows]
        return out

    def _guided(self, call: AttnCall, site: Site, cond: list, neg: list, inner) -> torch.Tensor:
        """The cond items' output with NAG; the negative branch runs as one fused SDPA call of its own, outside
        the other effects' batch (whose item masks it must not disturb)."""
        k_neg, v_neg = call.k[neg], call.v[neg]
        if site.kind == JOINT:  # image rows attend to the negative text and their own image tokens
            img = site.layout.img_k.as_slice()
            k_neg, v_neg = k_neg.clone(), v_neg.clone()
            k_neg[:, :, img], v_neg[:, :, img] = call.k[cond][:, :, img], call.v[cond][:, :, img]
        bias = call.bias[cond] if call.bias is not None and call.bias.shape[0] > 1 else call.bias
        out_neg = bhnd_to_bnhd(F.scaled_dot_product_attention(call.q[cond], k_neg, v_neg, attn_mask=bias))
        out = inner(call).clone()
        rows = _image_rows(site)
        out[cond, rows] = nag(out[cond, rows], out_neg[:, rows].to(out.dtype), self.scale, self.tau, self.alpha)
        return out

    def settings(self) -> str:
        return f"scale={self.scale:g} tau={self.tau:g} alpha={self.alpha:g}"


# -- SAG: the uncond chunk's attention map marks what to blur; its re-prediction guides -------------------------
STEP_STATE = "step_state"  # Site.extras key: the StepState of the current sampling step


class StepState:
    """What effects record during a step's main model call for its post-CFG term. Not a dict: the host copies
    nested dicts of transformer_options per call, and records must reach the original."""

    def __init__(self):
        self.records: dict = {}


def gaussian_kernel_2d(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """size x size normalised Gaussian (outer product of 1-D ones), in ``like``'s dtype and device."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(device=like.device, dtype=like.dtype)
    return torch.mm(k1[:, None], k1[None, :])


def blur_latent(x: torch.Tensor, sigma: float, size: int = 9) -> torch.Tensor:
    """x: b c h w -> b c h w, Gaussian-blurred per channel (reflect padded)."""
    kernel = gaussian_kernel_2d(size, sigma, x).expand(x.shape[1], 1, size, size)
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
        site.extras[STEP_STATE].records[self] = (mass[:, _image_rows_k(site)], site.layout.grid)
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


def _image_rows_k(site: Site) -> slice:
    span = site.layout.img_k
    return span.as_slice() if span is not None else slice(None)
