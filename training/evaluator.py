"""Deterministic scorer of the shapes images: reads an image (array or PNG/JPEG/WebP file) and
reports background colour, object colour, shape and size by plain image analysis.

    python3 training/evaluator.py image.png ["caption to check against"]
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data import COLOURS, IMAGE_SIZE, SHAPES, SIZES, Attributes, draw_shape_mask

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)
SIZE_THRESHOLD = (SIZES["small"] + SIZES["large"]) / 2  # bounding-box side in pixels
ATTRIBUTE_NAMES = ("background", "colour", "shape", "size")


@dataclass
class Reading:
    background: str
    colour: str
    shape: str
    size: str
    side: float
    shape_iou: float


def nearest_colour(rgb: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def load_image(source) -> np.ndarray:
    if isinstance(source, np.ndarray):
        image = source
    else:
        with Image.open(source) as im:
            image = np.asarray(im.convert("RGB"))
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        image = np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    return image.astype(np.float32)


def read_image(source) -> Reading:
    image = load_image(source)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background_rgb = np.median(border, axis=0)
    distance = np.sqrt(((image - background_rgb) ** 2).sum(axis=-1))
    mask = distance > max(40.0, 0.5 * distance.max())
    if mask.sum() < 12:
        return Reading(nearest_colour(background_rgb), "none", "none", "none", 0.0, 0.0)
    core = distance >= np.percentile(distance[mask], 50)
    colour = nearest_colour(np.median(image[mask & core], axis=0))
    rows = np.where(mask.sum(axis=1) >= 2)[0]
    cols = np.where(mask.sum(axis=0) >= 2)[0]
    if len(rows) == 0 or len(cols) == 0:
        return Reading(nearest_colour(background_rgb), colour, "none", "none", 0.0, 0.0)
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = float(max(bottom - top, right - left))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    best_shape, best_iou = "none", -1.0
    for shape in SHAPES:
        template = np.asarray(draw_shape_mask(shape, cx, cy, (bottom - top + right - left) / 2, IMAGE_SIZE)) > 127
        iou = (template & mask).sum() / max(1, (template | mask).sum())
        if iou > best_iou:
            best_shape, best_iou = shape, float(iou)
    size = "small" if side < SIZE_THRESHOLD else "large"
    return Reading(nearest_colour(background_rgb), colour, best_shape, size, side, best_iou)


def score(reading: Reading, expected: Attributes) -> dict[str, bool]:
    hits = {name: getattr(reading, name) == getattr(expected, name) for name in ATTRIBUTE_NAMES}
    hits["all"] = all(hits.values())
    return hits


def accuracy(readings: list[Reading], expected: list[Attributes]) -> dict[str, float]:
    scores = [score(r, e) for r, e in zip(readings, expected)]
    return {name: sum(s[name] for s in scores) / len(scores) for name in (*ATTRIBUTE_NAMES, "all")}


def main() -> None:
    """`evaluator.py IMAGE [CAPTION]` reads one image; `evaluator.py --pairs PAIRS.json --images DIR`
    scores DIR/<i>.png against caption i of a [[caption, seed], ...] list and prints the accuracy."""
    if sys.argv[1] == "--pairs":
        pairs = json.loads(Path(sys.argv[2]).read_text())
        images = Path(sys.argv[4])
        readings = [read_image(images / f"{i}.png") for i in range(len(pairs))]
        print(json.dumps(accuracy(readings, [Attributes.parse(caption) for caption, _ in pairs])))
        return
    reading = read_image(Path(sys.argv[1]))
    out = asdict(reading)
    if len(sys.argv) > 2:
        out["score"] = score(reading, Attributes.parse(sys.argv[2]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
