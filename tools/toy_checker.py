"""Score the toy model against the shapes world's ground truth, on captions training never saw.

    python -m tools.toy_checker [--samples 200] [--seed 1234] [--steps 20] [--cfg 8.0]

For each held-out caption it samples one image with the host's real sampler (KSampler's defaults: euler, normal,
20 steps, cfg 8) from that caption against an empty negative prompt, decodes it with the toy VAE, and scores every
shape the caption names: 'colour' = the named colour is the commonest shape colour inside that shape's
ground-truth region; 'position' = the named colour's pixels centre nearest the named position. Prints both as
percentages of all named shapes.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import torch

from tools import hostenv

log = logging.getLogger("attnlab.toy_checker")
SEED = 1234
DEFAULTS = {"steps": 20, "cfg": 8.0, "sampler": "euler", "scheduler": "normal"}


@dataclass
class Sampling:
    steps: int = DEFAULTS["steps"]
    cfg: float = DEFAULTS["cfg"]
    sampler: str = DEFAULTS["sampler"]
    scheduler: str = DEFAULTS["scheduler"]
    seed: int = SEED
    batch: int = 50


def load(folder=None):
    """(MODEL, CLIP, VAE) of the toy model (weights from ``folder``, default the pack's), the host booted."""
    toy = pack_module("nodes.toy_model")
    return toy.load_toy(folder or toy.WEIGHTS)


def pack_module(name: str):
    """A module of the pack (``nodes.regions``, ...), imported as the host imports it."""
    import importlib
    hostenv.bootstrap()
    hostenv.register_pack()
    return importlib.import_module(f"{hostenv.PACKAGE}.{name}")


def run_node(node_cls, **given):
    """Execute a V3 node of the pack with its schema's defaults for every input not given; returns its outputs."""
    values = {i.id: getattr(i, "default", None) for i in node_cls.define_schema().inputs}
    return node_cls.execute(**{**values, **given}).result


def encode(clip, captions: list) -> list:
    """One CONDITIONING whose batch holds each caption (what CLIPTextEncode gives, stacked)."""
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(c)) for c in captions]
    context = torch.cat([c[0][0] for c in conds])
    pooled = torch.cat([c[0][1]["pooled_output"] for c in conds])
    return [[context, {"pooled_output": pooled}]]


def sample_images(model, clip, vae, captions: list, sampling: Sampling, seed: int, positive=None) -> torch.Tensor:
    """Images b h w c (0..1) for ``captions`` (or the given positive CONDITIONING), one per caption."""
    import comfy.sample

    positive = positive or encode(clip, captions)
    negative = encode(clip, [""])
    latent = torch.zeros(len(captions), 4, 16, 16)
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(model, noise, sampling.steps, sampling.cfg, sampling.sampler, sampling.scheduler,
                                  positive, negative, latent, seed=seed, disable_pbar=True)
    return vae.decode(samples)


def score_images(images: torch.Tensor, scenes: list) -> dict:
    """Fractions over every named shape: {'colour', 'position', 'shapes'} (images b h w c)."""
    from toy import world
    colour, position = [], []
    for image, scene in zip(images, scenes):
        c, p = world.score(image.movedim(-1, 0).float(), scene)
        colour += c
        position += p
    n = len(colour)
    return {"colour": sum(colour) / n, "position": sum(position) / n, "shapes": n}


def check(samples: int = 200, sampling: Sampling | None = None, parts=None) -> dict:
    """The checker's figures for ``samples`` held-out captions (the toy model unless ``parts`` is given)."""
    from toy import world
    sampling = sampling or Sampling()
    model, clip, vae = parts or load()
    scenes = world.scenes(samples, sampling.seed, held_out=True)
    images = []
    for start in range(0, samples, sampling.batch):
        chunk = scenes[start:start + sampling.batch]
        images.append(sample_images(model, clip, vae, [s.caption for s in chunk], sampling, sampling.seed + start))
    figures = score_images(torch.cat(images), scenes)
    return {**figures, "samples": samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--cfg", type=float, default=DEFAULTS["cfg"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    figures = check(args.samples, Sampling(steps=args.steps, cfg=args.cfg, seed=args.seed))
    log.info("%d held-out captions, %d named shapes: colour %.1f%%, position %.1f%%", figures["samples"],
             figures["shapes"], 100 * figures["colour"], 100 * figures["position"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
