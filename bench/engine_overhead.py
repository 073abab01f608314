"""Engine overhead: sampling wall time with the engine installed, against vanilla, measured in the same run.

Variants, on SD1.5-sized attention shapes (the real SD1.5 UNet widths on a 64x64 latent) and on a Flux-shaped
DiT block stack (Flux's per-block widths, fewer blocks), random weights, the host's real sampler:
  vanilla          the unpatched model
  idle-window      engine installed, effect whose step window never opens (the cheapest no-effect path)
  idle-sites       engine installed, window open, but no site matches (every call is resolved, none changed)
  temperature      AttnLabTemperature x1.5 on every site
Goals (issue: engine): no-effect paths at most 1.02x vanilla, temperature at most 1.10x.
Variants run round-robin per repeat (drift cancels); medians are reported.

    python -m bench.engine_overhead [--steps 2] [--repeats 5] [--sdpa] [--quick] [--only sd15|flux]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from tools import hostenv

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {"idle-window": 1.02, "idle-sites": 1.02, "temperature": 1.10}


def sd15_model(quick: bool):
    import comfy.supported_models as sm
    from tools.tiny_models import patcher_from_config
    config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 64 if quick else 320,
              "num_res_blocks": [2] * 4, "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
              "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
              "use_linear_in_transformer": False, "context_dim": 768, "use_temporal_attention": False,
              "use_temporal_resblock": False}
    latent = torch.zeros(1, 4, 16, 16) if quick else torch.zeros(1, 4, 64, 64)
    cond = [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)), {}]]
    return patcher_from_config(sm.SD15, config, 0), latent, cond


def flux_model(quick: bool, blocks: tuple[int, int], latent_size: int = 64):
    import comfy.supported_models as sm
    from tools.tiny_models import patcher_from_config
    hidden, heads = (256, 2) if quick else (3072, 24)
    config = {"image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
              "patch_size": 2, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": hidden, "mlp_ratio": 4.0,
              "num_heads": heads, "depth": blocks[0], "depth_single_blocks": blocks[1], "axes_dim": [16, 56, 56],
              "theta": 10000, "qkv_bias": True}
    g = torch.Generator().manual_seed(0)
    latent = torch.zeros(1, 16, 16, 16) if quick else torch.zeros(1, 16, latent_size, latent_size)
    cond = [[torch.randn(1, 256, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                      "guidance": 3.5}]]
    return patcher_from_config(sm.Flux, config, 0), latent, cond


def variants(base):
    from attention_lab.attention.schedule import Schedule
    from attention_lab.attention.temperature import Temperature
    from attention_lab.nodes.host import add_effect
    never = Schedule(sigma_start=-1.0, sigma_end=-2.0)
    nowhere = Schedule(kinds=frozenset({"temporal"}))  # no family here has temporal sites
    return {"vanilla": base,
            "idle-window": add_effect(base, Temperature(never, scale=1.5), "Bench"),
            "idle-sites": add_effect(base, Temperature(nowhere, scale=1.5), "Bench"),
            "temperature": add_effect(base, Temperature(Schedule(), scale=1.5), "Bench")}


def sample(patcher, latent, cond, steps, cfg):
    import comfy.sample
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(patcher, noise, steps, cfg, "euler", "normal", cond, cond, latent, seed=0,
                               disable_pbar=True)


def round_robin(runs: dict, run, repeats: int) -> dict:
    """Wall times of ``run(variant)`` for every variant, interleaved per repeat (drift cancels), after a warm-up."""
    for variant in runs.values():
        run(variant)
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, variant in runs.items():
            start = time.perf_counter()
            run(variant)
            times[k].append(time.perf_counter() - start)
    return times


def measure(name, model, args) -> dict:
    patcher, latent, cond = model
    runs = variants(patcher)
    outputs = {k: sample(p, latent, cond, args.steps, args.cfg) for k, p in runs.items()}
    times = round_robin(runs, lambda p: sample(p, latent, cond, args.steps, args.cfg), args.repeats)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "medians_s": medians, "ratios": {k: medians[k] / medians["vanilla"] for k in medians},
            "idle_exact": all(torch.equal(outputs[k], outputs["vanilla"]) for k in ("idle-window", "idle-sites")),
            "temperature_changes": not torch.equal(outputs["temperature"], outputs["vanilla"]), "raw_s": times}


def table(result: dict) -> str:
    lines = [f"\n{result['model']}: median of {len(result['raw_s']['vanilla'])} repeats",
             f"  {'variant':<13} {'median s':>9} {'ratio':>7}  goal"]
    for k, t in result["medians_s"].items():
        ratio = result["ratios"][k]
        goal = f"<= {GOALS[k]:.2f}x {'met' if ratio <= GOALS[k] else 'MISSED'}" if k in GOALS else "baseline"
        lines.append(f"  {k:<13} {t:9.3f} {ratio:7.3f}  {goal}")
    lines.append(f"  no-effect outputs bit-identical to vanilla: {result['idle_exact']}; "
                 f"temperature changes the output: {result['temperature_changes']}")
    return "\n".join(lines) + "\n"


def common_arguments(doc: str, repeats: int, cfg: float) -> argparse.ArgumentParser:
    """The options every benchmark here takes: --steps, --repeats, --cfg, --quick, --only."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--cfg", type=float, default=cfg, help="1.0: one model call per step")
    p.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    p.add_argument("--only", choices=["sd15", "flux"])
    return p


def main(argv=None) -> int:
    p = common_arguments(__doc__, repeats=5, cfg=1.0)
    p.add_argument("--sdpa", action="store_true", help="PyTorch SDPA attention instead of the host default")
    p.add_argument("--flux-blocks", type=int, nargs=2, default=(1, 2), metavar=("DOUBLE", "SINGLE"))
    args = p.parse_args(argv)
    hostenv.bootstrap(sdpa=args.sdpa or None)
    hostenv.register_pack()
    import comfy.model_management as mm
    header = (f"engine overhead: {mm.get_torch_device()}, attention backend "
              f"{'SDPA' if args.sdpa else 'host default'}, {args.steps} steps, cfg {args.cfg}, float32\n")
    sys.stdout.write(header)
    quick = " [--quick: small shapes]" if args.quick else ""
    builders = {f"SD1.5 UNet (real widths, 64x64 latent){quick}": lambda: sd15_model(args.quick),
                f"Flux blocks (3072 wide, 24 heads, {args.flux_blocks[0]} double + {args.flux_blocks[1]} single, "
                f"1024 image + 256 text tokens){quick}": lambda: flux_model(args.quick, tuple(args.flux_blocks))}
    results = []
    for name, build in builders.items():
        if args.only and not name.lower().startswith(args.only[:2]):
            continue
        result = measure(name, build(), args)
        sys.stdout.write(table(result))
        sys.stdout.flush()
        results.append(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_overhead.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
