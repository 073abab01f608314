"""Train the pack's toy text-to-image model on the shapes world (deterministic, seeded, CPU).

    python -m tools.train_toy [--out toy/weights] [--scenes N] [--vae-steps N] [--unet-steps N] [--seed S]

Three phases, each logged with its losses: (1) the VAE on 32x32 crops of rendered scenes, its latent space then
rescaled so that latents times the SD1 scale factor have unit variance; (2) the training scenes encoded once;
(3) the UNet and the text encoder together (eps prediction on the host's SD1 noise schedule, min-SNR weighting,
10% empty captions for classifier-free guidance, EMA weights). Writes float16 safetensors files (what
``AttnLabToyModel`` loads), then runs the checker (``tools.toy_checker``) and writes its figures next to them.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch

from tools import hostenv

log = logging.getLogger("attnlab.train_toy")
SD1_SCALE = 0.18215  # the host's SD15 latent format scale factor
EMPTY_CAPTION_RATE = 0.1
MIN_SNR_GAMMA = 5.0
SHAPE_WEIGHT = 9.0
UNPLACED_RATE = 0.1


def _toy():
    import importlib
    hostenv.bootstrap(sdpa=True)
    hostenv.register_pack()
    return importlib.import_module(f"{hostenv.PACKAGE}.nodes.toy_model")


# -- data -------------------------------------------------------------------------------------------------------
def render_dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """n training scenes (no held-out caption): images n 3 64 64 in 0..1, shape pixels n 1 64 64 bool, captions
    (a tenth without positions: 'a red circle and a blue square', so prompts without them work too)."""
    from toy import world
    scenes = world.scenes(n, seed)
    shapes = torch.stack([s.masks.any(0, keepdim=True) for s in scenes])
    unplaced = (torch.rand(n, generator=torch.Generator().manual_seed(seed + 7)) < UNPLACED_RATE).tolist()
    captions = [world.caption_of(s.items, positions=not drop) for s, drop in zip(scenes, unplaced)]
    return torch.stack([s.image for s in scenes]), shapes, captions


class Captions:
    """Caption -> SD1 token ids (77 per caption, the host tokenizer's padding), cached."""

    def __init__(self, clip):
        self.clip, self.cache = clip, {}

    def ids(self, caption: str) -> list:
        if caption not in self.cache:
            self.cache[caption] = [token for token, _ in self.clip.tokenize(caption)["l"][0]]
        return self.cache[caption]


# -- VAE --------------------------------------------------------------------------------------------------------
def _kl(moments: torch.Tensor) -> torch.Tensor:
    mean, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


def train_vae(ae, images: torch.Tensor, shapes: torch.Tensor, steps: int, seed: int, batch: int = 8) -> None:
    """Squared error, shape pixels weighted up (they are few and carry all the meaning), plus a small KL."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    ae.train()
    for step in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        x = images[idx] * 2 - 1
        moments = ae.quant_conv(ae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        z = mean + (0.5 * logvar.clamp(-30, 20)).exp() * torch.randn(mean.shape, generator=g)
        error = (ae.decode(z) - x).pow(2)
        loss = (error * (1 + SHAPE_WEIGHT * shapes[idx])).mean() + 1e-5 * _kl(moments)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d/%d: mse %.5f, on shapes %.5f", step, steps, error.mean().item(),
                     error.mean(1, keepdim=True)[shapes[idx]].mean().item())
    ae.eval()


@torch.no_grad()
def encode_means(ae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The VAE's latent means (what the host's VAE Encode returns): n 4 16 16."""
    out = [ae.quant_conv(ae.encoder(images[i:i + batch] * 2 - 1)).chunk(2, dim=1)[0]
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def normalise_latents_(ae, means: torch.Tensor) -> None:
    """Fold a per-channel shift and scale into quant_conv / post_quant_conv so that encoded latents times the SD1
    scale factor have zero mean and unit variance (the decoder sees exactly what it saw before)."""
    mu, sd = means.mean(dim=(0, 2, 3)), means.std(dim=(0, 2, 3))
    gain = 1.0 / (SD1_SCALE * sd)  # new = (old - mu) * gain
    c = len(mu)
    q, p = ae.quant_conv, ae.post_quant_conv
    q.weight[:c] *= gain.view(-1, 1, 1, 1)
    q.bias[:c] = (q.bias[:c] - mu) * gain
    q.bias[c:] += 2 * gain.log()  # the log-variance follows the scale
    p.bias += (p.weight[:, :, 0, 0] @ mu)
    p.weight /= gain.view(1, -1, 1, 1)


def save_reconstructions(ae, images: torch.Tensor, path: Path) -> None:
    """A PNG: the scenes above, the VAE's reconstructions below (for the eye; not committed)."""
    import torchvision
    with torch.no_grad():
        rec = (ae.decode(encode_means(ae, images)).clamp(-1, 1) + 1) / 2
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(torch.cat([images, rec]), str(path), nrow=len(images))


# -- UNet and text encoder ------------------------------------------------------------------------------------------
def _alphas_cumprod(patcher) -> torch.Tensor:
    sigmas = patcher.model.model_sampling.sigmas.float()
    return 1.0 / (1.0 + sigmas ** 2)


def _ema_update(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), live.parameters()):
            e.lerp_(p, 1 - decay)


def _batch_ids(captions: list, idx: torch.Tensor, tokens: Captions, g: torch.Generator) -> list:
    empty = torch.rand(len(idx), generator=g) < EMPTY_CAPTION_RATE
    return [tokens.ids("" if drop else captions[i]) for i, drop in zip(idx.tolist(), empty.tolist())]


def diffusion_loss(unet, encoder, x0, ids, alphas, g: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted eps-prediction loss (Hang et al. 2023) on the host's discrete SD1 schedule, timesteps
    drawn with more weight on high noise, where layout and colour are decided."""
    u = torch.rand(len(x0), generator=g)
    t = ((1 - u * u) * len(alphas)).long().clamp(max=len(alphas) - 1)  # skewed to high noise: layout and colour
    a = alphas[t].view(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=g)
    context, _ = encoder(ids)
    eps = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, context=context)
    snr = (a / (1 - a)).view(-1)
    weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
    return (weight * (eps - noise).pow(2).mean(dim=(1, 2, 3))).mean()


def train_unet(patcher, clip, latents: torch.Tensor, captions: list, steps: int, seed: int, batch: int = 64,
               lr: float = 1e-3, ema_decay: float = 0.998):
    """Trains UNet and text encoder together; returns their EMA copies."""
    g = torch.Generator().manual_seed(seed)
    unet, encoder = patcher.model.diffusion_model, clip.cond_stage_model
    params = list(unet.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.03)
    ema_unet, ema_encoder = copy.deepcopy(unet).eval(), copy.deepcopy(encoder).eval()
    tokens, alphas = Captions(clip), _alphas_cumprod(patcher)
    unet.train(), encoder.train()
    started, running = time.monotonic(), None
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=g)
        loss = diffusion_loss(unet, encoder.clip_l, latents[idx], _batch_ids(captions, idx, tokens, g), alphas, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        _ema_update(ema_unet, unet, ema_decay if step > 100 else 0.0)
        _ema_update(ema_encoder, encoder, ema_decay if step > 100 else 0.0)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log.info("unet step %d/%d: loss %.4f (%.0f s)", step, steps, running, time.monotonic() - started)
    return ema_unet, ema_encoder


# -- saving -----------------------------------------------------------------------------------------------------
def save_parts(out: Path, toy, parts: dict) -> dict:
    """Writes each part's state dict as float16 safetensors; returns part -> size in bytes."""
    import safetensors.torch
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for part, module in parts.items():
        path = out / toy.FILES[part]
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
        safetensors.torch.save_file(state, str(path))
        sizes[part] = path.stat().st_size
    return sizes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=hostenv.PACK_ROOT / "toy" / "weights")
    p.add_argument("--scenes", type=int, default=24000, help="training scenes, rendered and encoded once")
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--unet-steps", type=int, default=2300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-samples", type=int, default=200, help="held-out captions the checker scores (0: skip)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    toy = _toy()
    started = time.monotonic()
    images, shapes, captions = render_dataset(args.scenes, args.seed)
    log.info("rendered %d scenes (%d distinct captions)", len(images), len(set(captions)))
    vae = toy.build_vae()
    ae = vae.first_stage_model.float()
    train_vae(ae, images, shapes, args.vae_steps, args.seed + 1)
    save_reconstructions(ae, images[:16], args.out / "vae_check.png")
    normalise_latents_(ae, encode_means(ae, images[:2048]))
    latents = encode_means(ae, images) * SD1_SCALE
    log.info("encoded latents: mean %.3f std %.3f (%.0f s so far)", latents.mean(), latents.std(),
             time.monotonic() - started)
    patcher, clip = toy.build_unet(), toy.build_clip()
    unet, encoder = train_unet(patcher, clip, latents, captions, args.unet_steps, args.seed + 2)
    sizes = save_parts(args.out, toy, {"unet": unet, "clip": encoder, "vae": ae})
    minutes = (time.monotonic() - started) / 60
    log.info("trained in %.1f min; files: %s", minutes, ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()))
    report = {"train_minutes": round(minutes, 1), "bytes": sizes, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.check_samples:
        from tools import toy_checker
        report.update(toy_checker.check(args.check_samples, parts=toy_checker.load(args.out)))
        log.info("checker: colour %.1f%%, position %.1f%%", 100 * report["colour"], 100 * report["position"])
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
