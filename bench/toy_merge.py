"""Token merging, downsampling and reuse on the pack's toy model: the checker's figures with each node at its
default settings against the unmerged model (issue goal: within 5 points).

    python -m bench.toy_merge [--samples 200] [--steps 20] [--cfg 8]

ToMe, ToDo and attention reuse run at their defaults on the same held-out captions and noise as the plain model
(KSampler's defaults otherwise, as the checker). Video merging needs frames, which the toy model has none of; its
quality is covered by the tests on tiny video models. The reuse node's log line says how often it reused.
"""
from __future__ import annotations

import argparse
import json
import logging

from bench.engine_overhead import RESULTS
from tools import toy_checker

log = logging.getLogger("attnlab.bench.toy_merge")
NODES = {"AttnLabToMe": "nodes.merge", "AttnLabToDo": "nodes.merge", "AttnLabAttentionReuse": "nodes.reuse"}
GOAL_POINTS = 5.0


def patched(model, node_id: str):
    return toy_checker.run_node(getattr(toy_checker.pack_module(NODES[node_id]), node_id), model=model)[0]


def verdict(figures: dict, name: str) -> str:
    drop = max(100 * (figures["none"][k] - figures[name][k]) for k in ("colour", "position"))
    return f"largest drop {drop:+.1f} points (goal <= {GOAL_POINTS:g}: {'met' if drop <= GOAL_POINTS else 'MISSED'})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=8.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, clip, vae = toy_checker.load()
    sampling = toy_checker.Sampling(steps=args.steps, cfg=args.cfg)
    figures = {}
    for name in ("none", *NODES):
        figures[name] = toy_checker.check(args.samples, sampling,
                                          parts=(model if name == "none" else patched(model, name), clip, vae))
        log.info("%-22s colour %5.1f%%  position %5.1f%%  (%d named shapes)%s", name, 100 * figures[name]["colour"],
                 100 * figures[name]["position"], figures[name]["shapes"],
                 "" if name == "none" else "  " + verdict(figures, name))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "toy_merge.json").write_text(json.dumps({"args": vars(args), "figures": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
