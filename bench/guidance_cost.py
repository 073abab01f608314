"""Guidance cost: AttnLabPAG against core's PerturbedAttentionGuidance, and PAG+SEG stacked (one batched pass)
against two separate extra passes, measured in the same run (medians of round-robin repeats).

Variants on SD1.5-sized shapes (real UNet widths, 64x64 latent) and a Flux-shaped block stack, cfg > 1:
  cfg              plain CFG (the cond/uncond call only)
  core             core's one-perturbation guidance: PAG on the UNet, skip-layer guidance (SLG) on Flux; one
                   extra model call per step
  ours             the same perturbation from Attention Lab (AttnLabPAG / AttnLabSkipLayerGuidance): its chunk
                   joins the cond/uncond call
  two-passes       two of core's perturbations: two separate extra calls per step (what stacking costs elsewhere)
  pag+seg          AttnLabPAG + AttnLabSEG: both chunks join the cond/uncond call
Goals (issue: guidance): ours <= 1.02x core; (pag+seg - cfg) <= 0.75x (two-passes - cfg).
On a CPU, compute grows linearly with the batch, so batching saves launch and memory traffic only; the
saving the goal counts on comes from GPU utilisation at small batches. The table says which device ran.

    python -m bench.guidance_cost [--steps 2] [--repeats 3] [--quick] [--only sd15|flux]
"""
from __future__ import annotations

import json
import statistics
import sys

from bench.engine_overhead import RESULTS, common_arguments, flux_model, round_robin, sample, sd15_model
from tools import hostenv


def _core_pag(base):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    return PerturbedAttentionGuidance.execute(base, 1.5).args[0]


def _core_slg(base):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT
    return SkipLayerGuidanceDiT.execute(base, 3.0, 0.0, 1.0, double_layers="0", single_layers="").args[0]


CORE = {"sd15": _core_pag, "flux": _core_slg}


def _ours(base, family):
    from attention_lab.nodes.guidance import AttnLabPAG, AttnLabSkipLayerGuidance
    if family == "sd15":
        return AttnLabPAG.execute(base, 3.0, 0.0, 0.0, 1.0, "", "all").args[0]
    return AttnLabSkipLayerGuidance.execute(base, 3.0, 0.0, 0.0, 1.0, "double.0", "all").args[0]


def variants(base, family: str) -> dict:
    from attention_lab.nodes.guidance import AttnLabPAG, AttnLabSEG
    core = CORE[family]
    pag = AttnLabPAG.execute(base, 3.0, 0.0, 0.0, 1.0, "", "all").args[0]
    return {"cfg": base, "core": core(base), "ours": _ours(base, family), "two-passes": core(core(base)),
            "pag+seg": AttnLabSEG.execute(pag, 3.0, 0.0, 10.0, 0.0, 1.0, "", "all").args[0]}


def measure(name: str, family: str, model, args) -> dict:
    patcher, latent, cond = model
    runs = variants(patcher, family)
    times = round_robin(runs, lambda p: sample(p, latent, cond, args.steps, args.cfg), args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "medians_s": med, "raw_s": times, "ours_vs_core": med["ours"] / med["core"],
            "stacked_extra_vs_two_passes_extra": (med["pag+seg"] - med["cfg"]) / (med["two-passes"] - med["cfg"])}


def table(result: dict) -> str:
    lines = [f"\n{result['model']}: median of {len(result['raw_s']['cfg'])} repeats",
             f"  {'variant':<11} {'median s':>9} {'vs cfg':>7}"]
    cfg = result["medians_s"]["cfg"]
    lines += [f"  {k:<11} {t:9.3f} {t / cfg:7.3f}" for k, t in result["medians_s"].items()]
    r1, r2 = result["ours_vs_core"], result["stacked_extra_vs_two_passes_extra"]
    lines.append(f"  ours / core = {r1:.3f} (goal <= 1.02: {'met' if r1 <= 1.02 else 'MISSED'})")
    lines.append(f"  extra cost of pag+seg / extra cost of two passes = {r2:.3f} "
                 f"(goal <= 0.75: {'met' if r2 <= 0.75 else 'MISSED'})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = common_arguments(__doc__, repeats=3, cfg=4.0)
    args = p.parse_args(argv)
    hostenv.bootstrap()
    hostenv.register_pack()
    import comfy.model_management as mm
    sys.stdout.write(f"guidance cost: {mm.get_torch_device()}, {args.steps} steps, cfg {args.cfg}, float32\n")
    builders = {"sd15": ("SD1.5 UNet (real widths, 64x64 latent); core = PAG", lambda: sd15_model(args.quick)),
                "flux": ("Flux blocks (3072 wide, 1 double + 2 single); core = SLG",
                         lambda: flux_model(args.quick, (1, 2)))}
    results = []
    for family, (name, build) in builders.items():
        if args.only and args.only != family:
            continue
        result = measure(name + (" [--quick]" if args.quick else ""), family, build(), args)
        sys.stdout.write(table(result))
        sys.stdout.flush()
        results.append(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guidance_cost.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
