"""Procedural captioned dataset: one coloured shape on a plain background, 64x64 RGB.

Every image is a pure function of (attributes, draw seed), so the data set is never stored:
it is regenerated bit-identically by anyone with this file.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter: anti-aliased edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (245, 225, 40),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
# Side of the object's bounding box in pixels (before a +-8% jitter).
SIZES: dict[str, int] = {"small": 22, "large": 40}

# Seeds below this belong to training; held-out pairs use seeds at or above it.
HELD_OUT_SEED_BASE = 1_000_000_000


@dataclass(frozen=True)
class Attributes:
    size: str
    colour: str
    shape: str
    background: str

    def caption(self) -> str:
        article = "an" if self.background[0] in "aeiou" else "a"
        return f"a {self.size} {self.colour} {self.shape} on {article} {self.background} background"

    @staticmethod
    def parse(caption: str) -> "Attributes":
        words = caption.split()
        if len(words) != 8 or words[0] != "a" or words[4] != "on" or words[5] not in ("a", "an"):
            raise ValueError(f"not a dataset caption: {caption!r}")
        return Attributes(size=words[1], colour=words[2], shape=words[3], background=words[6])


def all_attributes() -> list[Attributes]:
    return [
        Attributes(size, colour, shape, background)
        for size in SIZES
        for colour in COLOURS
        for shape in SHAPES
        for background in COLOURS
        if background != colour
    ]


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Polygon of a shape centred at (cx, cy) in a side x side box; None for the circle."""
    h = side / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # apex up, base at the bottom of the box
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "cross":  # plus sign, arm width one third of the side
        a = side / 6
        return [
            (cx - a, cy - h), (cx + a, cy - h), (cx + a, cy - a), (cx + h, cy - a),
            (cx + h, cy + a), (cx + a, cy + a), (cx + a, cy + h), (cx - a, cy + h),
            (cx - a, cy + a), (cx - h, cy + a), (cx - h, cy - a), (cx - a, cy - a),
        ]
    if shape == "circle":
        return None
    raise ValueError(shape)


def draw_shape_mask(shape: str, cx: float, cy: float, side: float, size: int, scale: int = 1) -> Image.Image:
    """A binary 'L' mask of the shape drawn at `scale` times the resolution `size`."""
    mask = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(mask)
    poly = shape_polygon(shape, cx * scale, cy * scale, side * scale)
    if poly is None:
        r = side * scale / 2
        draw.ellipse([cx * scale - r, cy * scale - r, cx * scale + r, cy * scale + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return mask


def render(attrs: Attributes, seed: int) -> np.ndarray:
    """The image for `attrs` with placement drawn from `seed`: uint8 [64, 64, 3]."""
    rng = random.Random(seed)
    side = SIZES[attrs.size] * rng.uniform(0.92, 1.08)
    margin = side / 2 + 2
    cx = rng.uniform(margin, IMAGE_SIZE - margin)
    cy = rng.uniform(margin, IMAGE_SIZE - margin)
    s = SUPERSAMPLE
    big = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[attrs.background])
    big.paste(COLOURS[attrs.colour], (0, 0), draw_shape_mask(attrs.shape, cx, cy, side, IMAGE_SIZE, s))
    return np.asarray(big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX), dtype=np.uint8)


def training_set(count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`count` images (uint8 [N,64,64,3]) with their captions; draw seeds in [0, HELD_OUT_SEED_BASE)."""
    combos = all_attributes()
    rng = random.Random(seed)
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(count):
        attrs = combos[i % len(combos)] if i < len(combos) else rng.choice(combos)
        images[i] = render(attrs, rng.randrange(HELD_OUT_SEED_BASE))
        captions.append(attrs.caption())
    return images, captions


# The held-out lists: the captions' generator seed and the first draw seed. "a" is the list the
# model card and `deno task evaluate` use by default; "b" is a second one drawn with another seed, to
# check that a result holds on held-out prompts and seeds in general.
HELD_OUT_LISTS: dict[str, tuple[int, int]] = {
    "a": (20240601, HELD_OUT_SEED_BASE),
    "b": (20261128, HELD_OUT_SEED_BASE + 500_000_000),
}


def held_out_pairs(count: int = 200, name: str = "a") -> list[tuple[str, int]]:
    """(caption, seed) pairs for evaluation; their seeds never occur in training."""
    combos = all_attributes()
    caption_seed, first_seed = HELD_OUT_LISTS[name]
    rng = random.Random(caption_seed)
    return [(rng.choice(combos).caption(), first_seed + i) for i in range(count)]


def caption_words() -> list[str]:
    words = {"a", "an", "on", "background"} | set(SIZES) | set(COLOURS) | set(SHAPES)
    return sorted(words)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["held-out"]:  # data.py held-out NAME COUNT: the list as JSON
        import json
        print(json.dumps(held_out_pairs(int(sys.argv[3]), sys.argv[2]), indent=2))
        sys.exit()
    imgs, caps = training_set(16)
    grid = np.concatenate([np.concatenate(list(imgs[r * 4:(r + 1) * 4]), axis=1) for r in range(4)], axis=0)
    Image.fromarray(grid).resize((512, 512), Image.NEAREST).save(sys.argv[1] if len(sys.argv) > 1 else "/tmp/grid.png")
    print("\n".join(caps))
    print(len(all_attributes()), "attribute combinations")
