"""Token merging, downsampling and reuse: wall time and deviation from the unmerged output, measured side by side.

Shapes (the host's own block classes, random weights at PyTorch's default scale, spatially smooth input so that
neighbouring tokens are alike as in a real latent; the host's attention override path):
  SD1.5 block   one SD1.5 level-1 transformer block (BasicTransformerBlock: 320 channels, 8 heads of 40, self- and
                cross-attention, feed-forward) at 1024x1024: 16384 image tokens, 77 text tokens
  Flux stack    one double and one single Flux block (3072 wide, 24 heads) at 1024x1024: 4096 image + 512 text
Variants (every one against "base", the unpatched block, in the same run):
  core-tome-R       core's TomePatchModel at ratio R (SD1.5 only: core reaches no DiT)
  tome-R            AttnLabToMe at ratio R with proportional attention off (2x2 stride, max_downsample 1)
  tome-R-prop       the same with proportional attention, the node's default (SD1.5, beside core's)
  todo-F            AttnLabToDo at factor F
  reuse             AttnLabAttentionReuse (threshold 0.05) over a synthetic 4-step trajectory whose input drifts
                    2% per step; base runs the same 4 inputs unpatched
Printed per variant: median block time, speed-up against base, median attention time (every attention call of
the block, measured around the host's attention override, so it includes merging and pooling), and the relative
L2 deviation of the block output from base's (reuse: the mean over its 4 steps).
Goals (issue: token merging): at equal ratio tome-R is at least 1.15x faster than core-tome-R with no larger
deviation; todo-2 at most halves the attention time. A PNG plots speed-up against deviation.

    python -m bench.merge_cost [--repeats 3] [--quick] [--only sd15|flux] [--sdpa | --host-attention]
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from bench.engine_overhead import RESULTS, common_arguments, round_robin
from tools import hostenv

RATIOS = (0.3, 0.5, 0.7)
FACTORS = (2, 4)
TOME_GOAL, TODO_GOAL = 1.15, 0.5
DRIFT, TRAJECTORY = 0.02, 4
SCHEDULE = dict(start_percent=0.0, end_percent=1.0, blocks="", kind="all")


# -- inputs and blocks --------------------------------------------------------------------------------------------
def fan_in_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights N(0, 1/fan_in), biases 0, norm scales 1 (host layers are allocated empty): PyTorch's default scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            is_norm = "norm" in type(m).__name__.lower()
            for name, p in m.named_parameters(recurse=False):
                if p.ndim >= 2 and not is_norm:
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
                else:
                    p.fill_(1.0 if is_norm and name in ("weight", "scale") else 0.0)
    return module


def smooth_tokens(channels: int, side: int, seed: int, coarse: int = 8) -> torch.Tensor:
    """1 (side side) c: a coarse random field upsampled (neighbours alike) plus 10% token noise."""
    g = torch.Generator().manual_seed(seed)
    field_ = torch.nn.functional.interpolate(torch.randn(1, channels, coarse, coarse, generator=g), size=(side, side),
                                             mode="bilinear", align_corners=False)
    x = field_ + 0.1 * torch.randn(field_.shape, generator=g)
    return x.flatten(2).transpose(1, 2).contiguous()


@dataclass
class Shape:
    """A block (stack) to time: ``forward(x, transformer_options)`` with the engine context already set up."""

    name: str
    family: str
    latent: torch.Tensor  # what the model would be sampled at: sets the token grid and the pixel area
    x: torch.Tensor
    forward: Callable
    options: Callable  # (transformer_options) -> options for one forward, with block tags
    extra: dict = field(default_factory=dict)


def sd15_shape(quick: bool) -> Shape:
    import comfy.ops
    from comfy.ldm.modules.attention import BasicTransformerBlock
    side, dim, heads = (32, 64, 2) if quick else (128, 320, 8)
    block = fan_in_init_(BasicTransformerBlock(dim, heads, dim // heads, context_dim=768, checkpoint=False,
                                               operations=comfy.ops.disable_weight_init), 0)
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
    latent = torch.zeros(1, 4, side, side)

    def options(to):
        return {**to, "block": ("input", 1), "block_index": 0, "original_shape": list(latent.shape),
                "activations_shape": list(latent.shape)}
    return Shape(f"SD1.5 level-1 block, {side * side} tokens x {dim} ch", "sd15", latent, smooth_tokens(dim, side, 2),
                 lambda x, to: block(x, context=context, transformer_options=to), options)


def flux_shape(quick: bool) -> Shape:
    import comfy.ops
    from comfy.ldm.flux.layers import DoubleStreamBlock, EmbedND, SingleStreamBlock
    side, dim, heads, txt = (16, 256, 2, 64) if quick else (64, 3072, 24, 512)
    ops = comfy.ops.disable_weight_init
    double = fan_in_init_(DoubleStreamBlock(dim, heads, 4.0, qkv_bias=True, operations=ops), 0)
    single = fan_in_init_(SingleStreamBlock(dim, heads, 4.0, operations=ops), 1)
    g = torch.Generator().manual_seed(3)
    txt_x, vec = torch.randn(1, txt, dim, generator=g), torch.randn(1, dim, generator=g)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(1, -1, 3)
    ids = torch.cat([torch.zeros(1, txt, 3, dtype=img_ids.dtype), img_ids], 1).float()
    pe = EmbedND(dim=dim // heads, theta=10000, axes_dim=[16, 56, 56])(ids)  # Flux's rotary axes (head dim 128)
    latent = torch.zeros(1, 16, 2 * side, 2 * side)

    def forward(x, to):
        from attention_lab.nodes.dispatch import CTX_KEY
        ctx = to[CTX_KEY]
        if ctx is not None:
            ctx.txt_len = txt
        img, t = double(img=x, txt=txt_x.clone(), vec=vec, pe=pe, transformer_options=to["double"])
        return single(torch.cat([t, img], 1), vec, pe, transformer_options=to["single"])

    def options(to):
        from attention_lab.attention.address import BlockAddress
        from attention_lab.nodes.dispatch import TAG_KEY, BlockTag
        from attention_lab.nodes.families import BY_NAME
        groups = {g.group: g for g in BY_NAME["flux"].dit_groups}
        tagged = {name: {**to, TAG_KEY: BlockTag(BlockAddress(name, 0), groups[name])} for name in ("double", "single")}
        return {**to, **tagged}
    return Shape(f"Flux stack (1 double + 1 single, {dim} wide), {side * side} image + {txt} text tokens", "flux",
                 latent, smooth_tokens(dim, side, 4), forward, options)


# -- the engine around a bare block ---------------------------------------------------------------------------------
class TimedOverride:
    """An attention override that times every attention call it passes on (to ``inner``, or the host's kernel)."""

    def __init__(self, inner=None):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, func, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(func, *args, **kwargs) if self.inner is not None else func(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def run_block(shape: Shape, model_options: dict, x: torch.Tensor, run, sigma: float = 1.0):
    """One forward of ``shape`` under a patched model's transformer_options -> (output, attention seconds)."""
    from attention_lab.nodes.dispatch import CTX_KEY, FAMILY_KEY, RUN_KEY, STACK_KEY, CallContext
    from attention_lab.nodes.families import BY_NAME
    to = dict(model_options.get("transformer_options", {}))
    timer = TimedOverride(to.get("optimized_attention_override"))
    to["optimized_attention_override"] = timer
    if run is not None:
        to[RUN_KEY] = run
    stack = to.get(STACK_KEY)
    ctx = None
    if stack is not None and stack.live:
        ctx = CallContext(stack, BY_NAME[to[FAMILY_KEY]], shape.latent, torch.tensor([sigma]), to)
    to[CTX_KEY] = ctx
    with torch.inference_mode():
        out = shape.forward(x.clone(), shape.options(to))  # host blocks may add to their inputs in place
    return out, timer.seconds


@dataclass
class Variant:
    model_options: dict
    steps: int = 1  # > 1: the drifting trajectory (reuse)


def trajectory(shape: Shape) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(shape.x.shape, generator=g) * shape.x.std()
    return [shape.x + DRIFT * s * noise for s in range(TRAJECTORY)]


def run_variant(shape: Shape, variant: Variant, inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """-> outputs and total attention seconds; a multi-step variant shares one run memory over its steps."""
    from attention_lab.attention.effect import RunMemory
    run, outs, seconds = RunMemory(), [], 0.0
    for s, x in enumerate(inputs[:variant.steps]):
        out, t = run_block(shape, variant.model_options, x, run, sigma=1.0 - s / 10)
        outs.append(out)
        seconds += t
    return outs, seconds


def variants(family: str) -> dict[str, Variant]:
    from attention_lab.nodes.merge import AttnLabToDo, AttnLabToMe
    from attention_lab.nodes.reuse import AttnLabAttentionReuse
    from tools import tiny_models
    base = tiny_models.build(family).patcher  # the family's model config; the timed blocks are the shapes above

    def options(node, **kw):
        return node.execute(base, **kw).args[0].model_options
    out = {"base": Variant(base.model_options)}
    if family == "sd15":
        from comfy_extras.nodes_tomesd import TomePatchModel
        for r in RATIOS:
            out[f"core-tome-{r}"] = Variant(TomePatchModel.execute(base, r).args[0].model_options)
    tome = dict(stride_x=2, stride_y=2, max_downsample="1", seed=0, apply_to="both", **SCHEDULE)
    for r in RATIOS:
        out[f"tome-{r}"] = Variant(options(AttnLabToMe, ratio=r, proportional=False, **tome))
        if family == "sd15":  # proportional attention: compared with core's deviation, which only SD1.5 has
            out[f"tome-{r}-prop"] = Variant(options(AttnLabToMe, ratio=r, proportional=True, **tome))
    for f in FACTORS:
        out[f"todo-{f}"] = Variant(options(AttnLabToDo, factor=f, max_downsample="1", apply_to="both", **SCHEDULE))
    out["reuse"] = Variant(options(AttnLabAttentionReuse, threshold=0.05, across_steps=True, across_cfg=True,
                                   **SCHEDULE), steps=TRAJECTORY)
    return out


def deviation(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    """Mean relative L2 distance ||out - ref|| / ||ref|| over the steps."""
    return statistics.fmean(float((o - r).norm() / r.norm()) for o, r in zip(outs, refs))


def measure(shape: Shape, args) -> dict:
    runs = variants(shape.family)
    if args.variants:
        runs = {k: v for k, v in runs.items() if k == "base" or k in args.variants}
    inputs = trajectory(shape)
    refs = [run_block(shape, runs["base"].model_options, x, None)[0] for x in inputs]
    attn = {k: [] for k in runs}
    outputs = {}

    def run(name_variant):
        name, variant = name_variant
        outs, seconds = run_variant(shape, variant, inputs)
        outputs[name] = outs
        attn[name].append(seconds)
    pairs = {k: (k, v) for k, v in runs.items()}
    times = round_robin(pairs, run, args.repeats)
    # base per step, so a multi-step variant compares with base over the same number of steps
    med = {k: statistics.median(v) / runs[k].steps for k, v in times.items()}
    med_attn = {k: statistics.median(v[1:]) / runs[k].steps for k, v in attn.items()}  # [0]: the warm-up
    dev = {k: deviation(outputs[k], refs) for k in runs}
    reuse_rate = reuse_count(shape, runs["reuse"], inputs) if "reuse" in runs else None
    return {"shape": shape.name, "family": shape.family, "medians_s": med, "attention_s": med_attn,
            "speedup": {k: med["base"] / t for k, t in med.items()}, "deviation": dev, "reuse": reuse_rate,
            "raw_s": times}


def reuse_count(shape: Shape, variant: Variant, inputs) -> str:
    """How often the reuse variant reused over its trajectory (its own report line)."""
    from attention_lab.attention.effect import RunMemory
    from attention_lab.nodes.dispatch import STACK_KEY
    run = RunMemory()
    for s, x in enumerate(inputs[:variant.steps]):
        run_block(shape, variant.model_options, x, run, sigma=1.0 - s / 10)
    effect = variant.model_options["transformer_options"][STACK_KEY].live[0]
    return effect.report(run.by_effect[id(effect)])


# -- reporting -------------------------------------------------------------------------------------------------------
def goals(result: dict) -> list[str]:
    lines, sp, dev = [], result["speedup"], result["deviation"]
    for r in RATIOS:
        core, ours = f"core-tome-{r}", f"tome-{r}"
        if core in sp and ours in sp:
            for name in (ours, f"{ours}-prop"):
                ratio = sp[name] / sp[core]
                ok = ratio >= TOME_GOAL and dev[name] <= dev[core]
                lines.append(f"  {name} vs {core}: {ratio:.2f}x the speed-up, deviation {dev[name]:.4f} vs "
                             f"{dev[core]:.4f} (goal >= {TOME_GOAL}x, no larger: {'met' if ok else 'MISSED'})")
    if "todo-2" in result["attention_s"]:
        share = result["attention_s"]["todo-2"] / result["attention_s"]["base"]
        lines.append(f"  todo-2 attention time = {share:.2f} of base (goal <= {TODO_GOAL}: "
                     f"{'met' if share <= TODO_GOAL else 'MISSED'})")
    if result.get("reuse"):
        lines.append(f"  {result['reuse']}")
    return lines


def table(result: dict) -> str:
    lines = [f"\n{result['shape']}: median of {len(result['raw_s']['base'])} repeats (per step)",
             f"  {'variant':<16} {'block s':>8} {'speed-up':>8} {'attn s':>8} {'deviation':>10}"]
    for k, t in result["medians_s"].items():
        lines.append(f"  {k:<16} {t:8.3f} {result['speedup'][k]:8.2f} {result['attention_s'][k]:8.3f} "
                     f"{result['deviation'][k]:10.4f}")
    return "\n".join(lines + goals(result)) + "\n"


def main(argv=None) -> int:
    p = common_arguments(__doc__, repeats=3, cfg=1.0)
    p.add_argument("--host-attention", action="store_true", help="the host's CPU default attention, not SDPA")
    p.add_argument("--variants", nargs="+", help="run only these variants (and base)")
    p.add_argument("--plot", default=str(RESULTS / "merge_cost.png"), help="where to write the PNG")
    args = p.parse_args(argv)
    hostenv.bootstrap(sdpa=not args.host_attention)
    hostenv.register_pack()
    import comfy.model_management as mm
    sys.stdout.write(f"token merging cost: {mm.get_torch_device()}, attention "
                     f"{'host default' if args.host_attention else 'SDPA'}, float32\n")
    shapes = {"sd15": sd15_shape, "flux": flux_shape}
    results = []
    for key, build in shapes.items():
        if args.only in (None, key):
            results.append(measure(build(args.quick), args))
            sys.stdout.write(table(results[-1]))
            sys.stdout.flush()
    from bench.plot import speed_quality_png
    speed_quality_png(results, args.plot)
    sys.stdout.write(f"plot: {args.plot}\n")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "merge_cost.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
