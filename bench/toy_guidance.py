"""Attention guidance on the pack's toy model: the checker's figures at cfg 1.5 with and without each guidance.

    python -m bench.toy_guidance [--samples 200] [--cfg 1.5] [--steps 20]

Every guidance node of the pack that applies to a UNet runs at its default settings (NAG's negative prompt: an
empty one) on the same held-out captions and noise as the plain model. Informative: there is no bar.
"""
from __future__ import annotations

import argparse
import json
import logging

from bench.engine_overhead import RESULTS
from tools import toy_checker

log = logging.getLogger("attnlab.bench.toy_guidance")
GUIDANCE = ("AttnLabPAG", "AttnLabSEG", "AttnLabSAG", "AttnLabNAG")  # skip-layer guidance is for DiTs only


def guided(model, clip, node_id: str):
    nodes = toy_checker.pack_module("nodes.guidance")
    extra = {"negative": toy_checker.encode(clip, [""])} if node_id == "AttnLabNAG" else {}
    return toy_checker.run_node(getattr(nodes, node_id), model=model, **extra)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=1.5)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, clip, vae = toy_checker.load()
    sampling = toy_checker.Sampling(steps=args.steps, cfg=args.cfg)
    figures = {}
    for name in ("none", *GUIDANCE):
        patched = model if name == "none" else guided(model, clip, name)
        figures[name] = toy_checker.check(args.samples, sampling, parts=(patched, clip, vae))
        log.info("%-12s colour %5.1f%%  position %5.1f%%  (%d named shapes, cfg %g)", name,
                 100 * figures[name]["colour"], 100 * figures[name]["position"], figures[name]["shapes"], args.cfg)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "toy_guidance.json").write_text(json.dumps({"args": vars(args), "figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
