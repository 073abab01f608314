"""A synthetic world of flat shapes, generated on the fly: 64x64 images of one to three shapes (circle, square,
triangle, star) in six colours at named positions (left, right, top, bottom, centre) on a plain or two-tone
background, each with its caption ("a red circle on the left and a blue square on the right") and each shape's
ground-truth mask. Pure torch, seeded, no host.

Shapes: image c h w (c = 3, values 0..1), masks n h w (n shapes of the scene, bool, visible part).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

SIZE = 64
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 40),
           "purple": (140, 60, 180), "orange": (245, 130, 30)}
BACKGROUNDS = {"white": (240, 240, 240), "grey": (175, 175, 175), "charcoal": (60, 60, 60),
               "beige": (220, 205, 170)}
SHAPES = ("circle", "square", "triangle", "star")
# position -> (phrase, anchor x, anchor y) in pixels of a SIZE x SIZE image
POSITIONS = {"left": ("on the left", 12, 32), "right": ("on the right", 52, 32), "top": ("at the top", 32, 12),
             "bottom": ("at the bottom", 32, 52), "centre": ("in the centre", 32, 32)}
JITTER = 2          # pixels either way around the anchor
HALF_SIZE = (6, 9)  # a shape's half-extent in pixels, inclusive range
SHAPE_COUNTS = ((1, 0.4), (2, 0.35), (3, 0.25))
HELD_OUT_MODULUS = 8  # a caption whose crc32 is 0 modulo this is never trained on


@dataclass(frozen=True)
class Item:
    colour: str
    shape: str
    position: str

    def phrase(self, position: bool = True) -> str:
        """'a red circle on the left' (or without the position: 'a red circle')."""
        article = "an" if self.colour[0] in "aeiou" else "a"
        where = f" {POSITIONS[self.position][0]}" if position else ""
        return f"{article} {self.colour} {self.shape}{where}"


@dataclass
class Scene:
    items: tuple
    image: torch.Tensor  # c h w, 0..1
    masks: torch.Tensor  # n h w bool, the visible part of each item

    @property
    def caption(self) -> str:
        return caption_of(self.items)


def caption_of(items, positions: bool = True) -> str:
    """'a red circle on the left and a blue square on the right' (or 'a red circle and a blue square')."""
    return " and ".join(item.phrase(positions) for item in items)


def is_held_out(caption: str) -> bool:
    """True for the captions kept out of training (a fixed eighth of all captions, by checksum)."""
    return zlib.crc32(caption.encode()) % HELD_OUT_MODULUS == 0


def _pick(g: torch.Generator, options, k: int = 1) -> list:
    order = torch.randperm(len(options), generator=g)[:k].tolist()
    return [options[i] for i in order]


def sample_items(g: torch.Generator, held_out: bool = False) -> tuple:
    """One to three items with distinct colours and positions whose caption is (or, by default, is not) held out."""
    counts, weights = zip(*SHAPE_COUNTS)
    while True:
        n = counts[int(torch.multinomial(torch.tensor(weights), 1, generator=g))]
        colours, positions = _pick(g, list(COLOURS), n), _pick(g, list(POSITIONS), n)
        shapes = [SHAPES[int(i)] for i in torch.randint(len(SHAPES), (n,), generator=g)]
        items = tuple(Item(c, s, p) for c, s, p in zip(colours, shapes, positions))
        if is_held_out(caption_of(items)) == held_out:
            return items


# -- rendering ----------------------------------------------------------------------------------------------------
def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates y, x: h w each."""
    axis = torch.arange(size, dtype=torch.float32) + 0.5
    return torch.meshgrid(axis, axis, indexing="ij")


def _convex(y: torch.Tensor, x: torch.Tensor, vertices: list) -> torch.Tensor:
    """Inside a convex polygon given counter-clockwise (in x right, y down: clockwise on screen): h w bool."""
    inside = torch.ones_like(x, dtype=torch.bool)
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        inside &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0
    return inside


def _polar(cx: float, cy: float, radius: float, angle: float) -> tuple:
    return cx + radius * math.cos(angle), cy + radius * math.sin(angle)


def _circle(y, x, cx, cy, r):
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _square(y, x, cx, cy, r):
    side = 0.85 * r  # about a circle's area
    return ((x - cx).abs() <= side) & ((y - cy).abs() <= side)


def _triangle(y, x, cx, cy, r):
    up = -math.pi / 2
    return _convex(y, x, [_polar(cx, cy + 0.2 * r, 1.2 * r, up + k * 2 * math.pi / 3) for k in range(3)])


def _star(y, x, cx, cy, r):
    up, step = -math.pi / 2, 2 * math.pi / 5
    mask = torch.zeros_like(x, dtype=torch.bool)
    for k in range(5):  # five convex kites: centre, inner corner, outer point, inner corner
        a = up + k * step
        mask |= _convex(y, x, [(cx, cy), _polar(cx, cy, 0.5 * r, a - step / 2), _polar(cx, cy, 1.15 * r, a),
                               _polar(cx, cy, 0.5 * r, a + step / 2)])
    return mask


DRAW = {"circle": _circle, "square": _square, "triangle": _triangle, "star": _star}


def _rgb(name_to_rgb: dict, name: str) -> torch.Tensor:
    return torch.tensor(name_to_rgb[name], dtype=torch.float32).view(3, 1, 1) / 255


def _background(g: torch.Generator, size: int) -> torch.Tensor:
    """A plain or two-tone (split left/right or top/bottom) background: c h w."""
    tones = _pick(g, list(BACKGROUNDS), 2)
    image = _rgb(BACKGROUNDS, tones[0]).expand(3, size, size).clone()
    split = int(torch.randint(3, (1,), generator=g))  # 0 plain, 1 left/right, 2 top/bottom
    if split == 1:
        image[:, :, size // 2:] = _rgb(BACKGROUNDS, tones[1])
    elif split == 2:
        image[:, size // 2:, :] = _rgb(BACKGROUNDS, tones[1])
    return image


def render(items: tuple, g: torch.Generator, size: int = SIZE) -> Scene:
    """Draw ``items`` in order (later ones on top) with seeded jitter, sizes and background."""
    y, x = _grid(size)
    image = _background(g, size)
    scale = size / SIZE
    masks = []
    for item in items:
        _, ax, ay = POSITIONS[item.position]
        jx, jy = (torch.randint(-JITTER, JITTER + 1, (2,), generator=g) * scale).tolist()
        r = int(torch.randint(HALF_SIZE[0], HALF_SIZE[1] + 1, (1,), generator=g)) * scale
        mask = DRAW[item.shape](y, x, ax * scale + jx, ay * scale + jy, r)
        for earlier in masks:
            earlier &= ~mask
        masks.append(mask)
        image = torch.where(mask, _rgb(COLOURS, item.colour), image)
    return Scene(items, image, torch.stack(masks))


def scenes(n: int, seed: int, held_out: bool = False) -> list:
    """``n`` seeded scenes; held_out=True draws only from the captions training never sees."""
    g = torch.Generator().manual_seed(seed)
    return [render(sample_items(g, held_out), g) for _ in range(n)]


def scene_for(items: tuple, seed: int = 0, size: int = SIZE) -> Scene:
    """The scene of the given items (for masks of a caption that the caller chose)."""
    return render(tuple(items), torch.Generator().manual_seed(seed), size)


def position_mask(position: str, size: int = SIZE) -> torch.Tensor:
    """Where a shape at ``position`` can land (anchor +- jitter + the largest half-extent): h w float 0/1."""
    _, ax, ay = POSITIONS[position]
    reach = (JITTER + HALF_SIZE[1] * 1.2 + 1) * size / SIZE
    y, x = _grid(size)
    box = ((x - ax * size / SIZE).abs() <= reach) & ((y - ay * size / SIZE).abs() <= reach)
    return box.float()


# -- scoring ----------------------------------------------------------------------------------------------------
PALETTE_NAMES = tuple(COLOURS) + tuple(BACKGROUNDS)


def classify(image: torch.Tensor) -> torch.Tensor:
    """Each pixel's nearest palette entry (shape colours first, then backgrounds): c h w -> h w long."""
    palette = torch.tensor([*COLOURS.values(), *BACKGROUNDS.values()], dtype=torch.float32) / 255
    distance = ((image.unsqueeze(0) - palette.view(-1, 3, 1, 1)) ** 2).sum(1)
    return distance.argmin(0)


def nearest_position(labels: torch.Tensor, colour: str) -> str | None:
    """The named position whose anchor is nearest the centroid of ``colour``'s pixels; None if it has none."""
    ys, xs = torch.nonzero(labels == list(COLOURS).index(colour), as_tuple=True)
    if len(xs) == 0:
        return None
    scale = labels.shape[-1] / SIZE
    cx, cy = (xs.float().mean() + 0.5) / scale, (ys.float().mean() + 0.5) / scale
    return min(POSITIONS, key=lambda p: (POSITIONS[p][1] - cx) ** 2 + (POSITIONS[p][2] - cy) ** 2)


def colour_dominates(labels: torch.Tensor, mask: torch.Tensor, colour: str) -> bool:
    """``colour`` is the commonest shape colour (backgrounds aside) inside ``mask``: labels h w, mask h w bool."""
    inside = labels[mask]
    counts = torch.bincount(inside[inside < len(COLOURS)], minlength=len(COLOURS))
    return bool(counts.sum() > 0 and counts.argmax() == list(COLOURS).index(colour))


def score(image: torch.Tensor, scene: Scene) -> tuple[list, list]:
    """Per item of ``scene``: (colour dominates its ground-truth region, its colour lands at its position)."""
    labels = classify(image)
    colour = [colour_dominates(labels, m, it.colour) for it, m in zip(scene.items, scene.masks)]
    position = [nearest_position(labels, it.colour) == it.position for it in scene.items]
    return colour, position
