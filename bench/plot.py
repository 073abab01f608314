"""A scatter plot as a PNG, drawn with Pillow (which the host already requires): speed-up against deviation."""
from __future__ import annotations

from pathlib import Path

PANEL, MARGIN = (560, 420), 60
COLOURS = {"core-tome": (200, 60, 60), "tome": (40, 110, 200), "todo": (40, 160, 90), "reuse": (150, 90, 200),
           "base": (90, 90, 90)}


def _colour(name: str) -> tuple[int, int, int]:
    for prefix, colour in COLOURS.items():
        if name.startswith(prefix):
            return colour
    return (0, 0, 0)


def _panel(draw, left: int, result: dict) -> None:
    """One panel: x = relative L2 deviation, y = speed-up over base, a labelled dot per variant."""
    w, h = PANEL
    x0, y0, x1, y1 = left + MARGIN, MARGIN, left + w - 20, h - MARGIN
    dev, sp = result["deviation"], result["speedup"]
    xmax = max(max(dev.values()) * 1.15, 1e-3)
    ymax = max(max(sp.values()) * 1.1, 1.2)
    draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
    for i in range(5):
        gx, gy = x0 + (x1 - x0) * i / 4, y1 - (y1 - y0) * i / 4
        draw.line([gx, y1, gx, y1 + 4], fill=(0, 0, 0))
        draw.text((gx - 12, y1 + 8), f"{xmax * i / 4:.3f}", fill=(0, 0, 0))
        draw.line([x0 - 4, gy, x0, gy], fill=(0, 0, 0))
        draw.text((x0 - 40, gy - 6), f"{ymax * i / 4:.2f}", fill=(0, 0, 0))
    one = y1 - (y1 - y0) / ymax
    draw.line([x0, one, x1, one], fill=(180, 180, 180))
    for name in sp:
        px = x0 + (x1 - x0) * dev[name] / xmax
        py = y1 - (y1 - y0) * sp[name] / ymax
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=_colour(name))
        draw.text((px + 6, py - 6), name, fill=_colour(name))
    draw.text((x0, 12), result["shape"][:80], fill=(0, 0, 0))
    draw.text((x0, 30), "speed-up over base (y) against relative L2 deviation of the output (x)", fill=(60, 60, 60))


def speed_quality_png(results: list[dict], path: str) -> None:
    """One panel per result (its 'shape', 'speedup' and 'deviation' dicts) side by side, written to ``path``."""
    from PIL import Image, ImageDraw
    image = Image.new("RGB", (PANEL[0] * max(1, len(results)), PANEL[1]), "white")
    draw = ImageDraw.Draw(image)
    for i, result in enumerate(results):
        _panel(draw, i * PANEL[0], result)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
