"""Ground-truth drawings of held-out (caption, seed) pairs, as PNG files DIR/<i>.png: the real images
the server inverts when it measures inversion quality.

    python3 training/render.py --pairs PAIRS.json --out DIR [--count N]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from data import Attributes, render


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int)
    args = parser.parse_args()
    pairs = json.loads(args.pairs.read_text())[: args.count]
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (caption, seed) in enumerate(pairs):
        Image.fromarray(render(Attributes.parse(caption), seed)).save(args.out / f"{i}.png")
    print(f"wrote {len(pairs)} drawings to {args.out}")


if __name__ == "__main__":
    main()
