"""Regions cost: AttnLabRegionalPrompt (four regions in the base prompt's model call) against one plain prompt and
against core's masked conditionings, measured in the same run (medians of round-robin repeats).

Variants on SD1.5-sized shapes (real UNet widths, 64x64 latent) and a Flux-shaped block stack, cfg > 1, four
regions on the four quadrants of the image:
  single            the plain model sampled with the base prompt alone (the baseline)
  regions-hard      AttnLabRegionalPrompt, mode hard, isolation 0, sampled with its joined conditioning (base
                    tokens, then each region's)
  regions-hard-iso  the same with isolation 0.5 (self-attention bias between regions)
  regions-dense     mode dense (DenseDiffusion: explicit attention maps, expected slower)
  core-masked       core's way: the base prompt plus four ConditioningSetMask'd region prompts in one positive list
                    (ConditioningCombine), on the plain model; the host runs each as its own cond (batched into one
                    model call where shapes and its memory estimate allow)
Region prompts have the lengths the real text encoders give short prompts (CLIP pads to 77 tokens, Flux's T5 to
256) unless --region-tokens says otherwise. The negative prompt has the base prompt's length. Model calls per
step and their batch sizes are counted in a separate, untimed pass (a model-function wrapper).
Goals (issue: regions): regions-hard / single <= 1.3 on both shapes; regions-hard / core-masked is printed too
(expected well below 1: core runs the model on every region's cond).

    python -m bench.regions_cost [--steps 2] [--repeats 3] [--quick] [--only sd15|flux] [--region-tokens N N N N]
"""
from __future__ import annotations

import json
import statistics
import sys

import torch

from bench.engine_overhead import RESULTS, common_arguments, flux_model, round_robin, sd15_model
from tools import hostenv

GOAL = 1.3
TOKENS = {"sd15": (77, 77, 77, 77), "flux": (256, 256, 256, 256)}  # what CLIP / T5 give short prompts


def sample(patcher, latent, positive, negative, steps, cfg):
    """engine_overhead.sample with distinct positive and negative prompts."""
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(patcher, noise, steps, cfg, "euler", "normal", positive, negative, latent, seed=0,
                               disable_pbar=True)


def prompt(like, length: int, seed: int):
    """A CONDITIONING shaped like ``like``'s first entry (same extras), with ``length`` random tokens."""
    tokens, extras = like[0]
    g = torch.Generator().manual_seed(seed)
    extras = {k: torch.randn(v.shape, generator=g) if isinstance(v, torch.Tensor) else v for k, v in extras.items()}
    return [[torch.randn(1, length, tokens.shape[-1], generator=g), extras]]


def quadrants(latent) -> list[torch.Tensor]:
    """Four H W masks at pixel size (8x the latent), one per quadrant."""
    h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
    masks = []
    for top in (0, h // 2):
        for left in (0, w // 2):
            m = torch.zeros(h, w)
            m[top:top + h // 2, left:left + w // 2] = 1
            masks.append(m)
    return masks


def variants(patcher, base, latent, lengths) -> dict:
    """name -> (model, positive)."""
    from attention_lab.nodes.regions import AttnLabRegion, AttnLabRegionalPrompt
    from nodes import ConditioningSetMask
    region_prompts = [prompt(base, n, 10 + i) for i, n in enumerate(lengths)]
    masks = quadrants(latent)
    regions = None
    for cond, mask in zip(region_prompts, masks):
        regions = AttnLabRegion.execute(cond, mask, 1.0, regions).args[0]

    def regional(mode, isolation):
        out = AttnLabRegionalPrompt.execute(patcher, base, regions, mode, isolation, 1.0, 0.0, 1.0, "", "all",
                                            "cond")
        return out.args[0], out.args[1]

    core = list(base)
    for cond, mask in zip(region_prompts, masks):
        core += ConditioningSetMask().append(cond, mask, "default", 1.0)[0]  # ConditioningCombine: list concat
    return {"single": (patcher, base), "regions-hard": regional("hard", 0.0),
            "regions-hard-iso": regional("hard", 0.5), "regions-dense": regional("dense", 0.0),
            "core-masked": (patcher, core)}


def count_calls(runs: dict, latent, negative, args) -> dict:
    """Untimed pass: per variant, the batch sizes of every model call of the first step, and calls per step."""
    out = {}
    for k, (model, positive) in runs.items():
        seen = []

        def wrapper(apply_model, a, seen=seen):
            seen.append(int(a["input"].shape[0]))
            return apply_model(a["input"], a["timestep"], **a["c"])
        m = model.clone()
        m.set_model_unet_function_wrapper(wrapper)
        result = sample(m, latent, positive, negative, args.steps, args.cfg)
        per_step = len(seen) / args.steps
        out[k] = {"calls_per_step": per_step, "batches": seen[:max(1, round(per_step))],
                  "finite": bool(torch.isfinite(result).all())}
    return out


def measure(name: str, family: str, model, args) -> dict:
    patcher, latent, base = model
    lengths = tuple(args.region_tokens or TOKENS[family])
    negative = prompt(base, base[0][0].shape[1], 99)
    runs = variants(patcher, base, latent, lengths)
    if args.variants:
        runs = {k: v for k, v in runs.items() if k in {"single", "regions-hard", *args.variants}}
    calls = count_calls(runs, latent, negative, args)
    joined = runs["regions-hard"][1]
    changes = not torch.equal(sample(patcher, latent, joined, negative, args.steps, args.cfg),
                              sample(runs["regions-hard"][0], latent, joined, negative, args.steps, args.cfg))
    times = round_robin(runs, lambda v: sample(v[0], latent, v[1], negative, args.steps, args.cfg), args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "region_tokens": lengths, "base_tokens": base[0][0].shape[1], "medians_s": med,
            "ratios": {k: t / med["single"] for k, t in med.items()}, "calls": calls,
            "hard_vs_single": med["regions-hard"] / med["single"],
            "hard_vs_core_masked": med["regions-hard"] / med["core-masked"] if "core-masked" in med else None,
            "hard_changes_output": changes,
            "raw_s": times}


def table(result: dict) -> str:
    lines = [f"\n{result['model']}: median of {len(result['raw_s']['single'])} repeats; base prompt "
             f"{result['base_tokens']} tokens, regions {', '.join(str(n) for n in result['region_tokens'])}",
             f"  {'variant':<16} {'median s':>9} {'vs single':>9} {'calls/step':>10}  batch sizes (first step)"]
    for k, t in result["medians_s"].items():
        c = result["calls"][k]
        lines.append(f"  {k:<16} {t:9.3f} {result['ratios'][k]:9.3f} {c['calls_per_step']:10g}  "
                     f"{c['batches']}{'' if c['finite'] else '  NON-FINITE OUTPUT'}")
    r1, r2 = result["hard_vs_single"], result["hard_vs_core_masked"]
    lines.append(f"  regions-hard / single = {r1:.3f} (goal <= {GOAL}: {'PASS' if r1 <= GOAL else 'MISS'})")
    if r2 is not None:
        lines.append(f"  regions-hard / core-masked = {r2:.3f} (expected well below 1)")
    lines.append(f"  regions-hard changes the output of the plain model on the joined prompt: "
                 f"{result['hard_changes_output']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = common_arguments(__doc__, repeats=3, cfg=4.0)
    p.add_argument("--region-tokens", type=int, nargs=4, metavar="N",
                   help="the four region prompts' token counts (default: 77 each on SD1.5, 256 each on Flux)")
    p.add_argument("--flux-latent", type=int, default=64,
                   help="Flux latent side: 64 = 512x512 pixels (1024 image tokens), 128 = 1024x1024 (4096)")
    p.add_argument("--variants", nargs="+", help="run only these variants (default: all)")
    args = p.parse_args(argv)
    hostenv.bootstrap()
    hostenv.register_pack()
    import comfy.model_management as mm
    header = f"regions cost: {mm.get_torch_device()}, {args.steps} steps, cfg {args.cfg}, float32, 4 regions\n"
    sys.stdout.write(header)
    quick = " [--quick: small shapes]" if args.quick else ""
    builders = {"sd15": (f"SD1.5 UNet (real widths, 64x64 latent){quick}", lambda: sd15_model(args.quick)),
                "flux": (f"Flux blocks (3072 wide, 1 double + 2 single, {(args.flux_latent // 2) ** 2} image "
                         f"tokens){quick}", lambda: flux_model(args.quick, (1, 2), args.flux_latent))}
    results = []
    for family, (name, build) in builders.items():
        if args.only and args.only != family:
            continue
        result = measure(name, family, build(), args)
        sys.stdout.write(table(result))
        sys.stdout.flush()
        results.append(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "regions_cost.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
