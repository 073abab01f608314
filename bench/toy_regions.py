"""Regional prompts on the pack's toy model: do two regions put the right colour on each side?

    python -m bench.toy_regions [--samples 100] [--steps 20] [--cfg 8]

Two regions, 'a red circle' on the left half and 'a blue square' on the right half, against the plain joint
prompt 'a red circle and a blue square' (and, for reference, the prompt that names the positions); each mode
with that joint prompt as the base prompt and with an empty one. A sample
passes when red is the commonest shape colour in the left half and blue in the right half. Each variant samples
the same noise (one latent batch, KSampler's defaults). Prints the pass rate per variant; the goal is at least
80% with regions, where the joint prompt does clearly worse.
"""
from __future__ import annotations

import argparse
import json
import logging

import torch

from bench.engine_overhead import RESULTS
from tools import toy_checker

log = logging.getLogger("attnlab.bench.toy_regions")
JOINT = "a red circle and a blue square"
PLACED = "a red circle on the left and a blue square on the right"
REGIONS = (("a red circle", "red"), ("a blue square", "blue"))
GOAL = 0.80


def halves(size: int = 64) -> list[torch.Tensor]:
    """Left and right half masks, 1 h w."""
    left = torch.zeros(1, size, size)
    left[..., : size // 2] = 1.0
    return [left, 1.0 - left]


def regional(model, clip, mode: str, base: str):
    """(MODEL, CONDITIONING) from the pack's region nodes: the two half-image regions over ``base``."""
    nodes = toy_checker.pack_module("nodes.regions")
    regions = None
    for (prompt, _), mask in zip(REGIONS, halves()):
        regions = toy_checker.run_node(nodes.AttnLabRegion, conditioning=toy_checker.encode(clip, [prompt]),
                                       mask=mask, regions=regions)[0]
    return toy_checker.run_node(nodes.AttnLabRegionalPrompt, model=model, conditioning=toy_checker.encode(clip, [base]),
                                regions=regions, mode=mode)


def passes(images: torch.Tensor) -> list[bool]:
    """Per image b h w c: red dominates the left half and blue the right half."""
    from toy import world
    masks = [m[0].bool() for m in halves(images.shape[1])]
    out = []
    for image in images:
        labels = world.classify(image.movedim(-1, 0).float())
        out.append(all(world.colour_dominates(labels, m, c) for m, (_, c) in zip(masks, REGIONS)))
    return out


def variants(model, clip) -> dict:
    """name -> (MODEL, positive CONDITIONING)."""
    out = {"joint prompt": (model, toy_checker.encode(clip, [JOINT])),
           "prompt naming positions": (model, toy_checker.encode(clip, [PLACED]))}
    for mode in ("hard", "dense", "paint"):
        out[f"regions ({mode})"] = regional(model, clip, mode, JOINT)
        out[f"regions ({mode}, empty base)"] = regional(model, clip, mode, "")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, clip, vae = toy_checker.load()
    sampling = toy_checker.Sampling(steps=args.steps, cfg=args.cfg)
    rates = {}
    for name, (patched, positive) in variants(model, clip).items():
        cond = [[positive[0][0].expand(args.samples, -1, -1), dict(positive[0][1])]]
        images = toy_checker.sample_images(patched, clip, vae, [""] * args.samples, sampling, args.seed, cond)
        rates[name] = sum(passes(images)) / args.samples
        log.info("%-26s red left and blue right: %5.1f%% of %d samples", name, 100 * rates[name], args.samples)
    best = max((k for k in rates if k.startswith("regions")), key=rates.get)
    met = rates[best] >= GOAL and rates[best] > rates["joint prompt"] + 0.2
    log.info("best regional variant: %s", best)
    log.info("goal (regions >= %.0f%%, clearly above the joint prompt): %s", 100 * GOAL, "met" if met else "missed")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "toy_regions.json").write_text(json.dumps({"args": vars(args), "rates": rates}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
