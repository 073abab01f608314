"""Attention perturbations for guidance, and the guidance arithmetic.

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


def identity_attention(v: torch.Tensor, n_q: int) -> torch.Tensor:
    """v: b h n d (self-attention, n == n_q) -> b h n d: every query attends only to itself (PAG)."""
    if v.shape[2] != n_q:
        raise ValueError(f"identity attention needs as many keys as queries ({v.shape[2]} != {n_q})")
    return v


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
    extrapolate, clip the L1-norm ratio to ``tau``, blend with ``alpha``."""
    guided = pos * scale - neg * (scale - 1)
    norm_pos = pos.abs().sum(dim=-1, keepdim=True).clamp_min(1e-6)
    norm_guided = guided.abs().sum(dim=-1, keepdim=True)
    ratio = norm_guided / norm_pos
    guided = torch.where(ratio > tau, guided * (tau / ratio.clamp_min(1e-6)), guided)
    return guided * alpha + pos * (1 - alpha)


def rescale(guided: torch.Tensor, reference: torch.Tensor, factor: float) -> torch.Tensor:
    """guided/reference: b c ... -> b c ...: match the per-item std of ``reference``, blended by ``factor``."""
    if factor == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    std_ref = reference.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return factor * guided * (std_ref / std_guided) + (1 - factor) * guided
