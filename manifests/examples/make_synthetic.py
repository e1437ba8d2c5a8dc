"""Writes `synthetic/`: a small manifest of flat-shaded scenes with one drag of each type.

    python -m manifests.examples.make_synthetic
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from manifests.schema import write_manifest

HERE = Path(__file__).parent / "synthetic"


def background(height: int, width: int, seed: int) -> np.ndarray:
    ys, xs = np.mgrid[:height, :width]
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = (xs / width + ys / height)[..., None] / 2
    return (a * (1 - t) + b * t).astype(np.uint8)


def save_png(array: np.ndarray, name: str) -> str:
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1)).save(out, "PNG")
    (HERE / name).write_bytes(out.getvalue())
    return name


def point(x: float, y: float) -> dict:
    return {"x": float(x), "y": float(y)}


def scenes() -> list[dict]:
    rows = []
    # translate: a disc moves right
    h, w = 64, 96
    ys, xs = np.mgrid[:h, :w]
    image = background(h, w, 1)
    disc = (xs - 28) ** 2 + (ys - 32) ** 2 <= 10**2
    image[disc] = (220, 40, 40)
    rows.append(dict(item_id="translate-disc", image=image, prompt="a red disc",
                     drags=[("translate", disc, (28, 32), (60, 30), None)]))
    # deform: the right end of a bar is pulled down
    image = background(h, w, 2)
    bar = (ys >= 28) & (ys < 36) & (xs >= 16) & (xs < 80)
    image[bar] = (40, 90, 220)
    end = bar & (xs >= 60)
    rows.append(dict(item_id="deform-bar-end", image=image, prompt="a blue bar",
                     drags=[("deform", end, (70, 32), (70, 44), None)]))
    # rotate: a bar turns 90° about its left end
    h, w = 64, 64
    ys, xs = np.mgrid[:h, :w]
    image = background(h, w, 3)
    bar = (ys >= 28) & (ys < 36) & (xs >= 24) & (xs < 56)
    image[bar] = (240, 200, 40)
    rows.append(dict(item_id="rotate-bar", image=image, prompt="a yellow bar",
                     drags=[("rotate", bar, (52, 32), (28, 56), (28, 32))]))
    return rows


def main() -> None:
    HERE.mkdir(exist_ok=True)
    manifest = []
    for scene in scenes():
        item = scene["item_id"]
        drags = []
        for i, (kind, mask, handle, target, center) in enumerate(scene["drags"]):
            drags.append({"type": kind, "handle_mask_uri": save_png(mask, f"{item}.handle{i}.png"),
                          "handle": point(*handle), "target": point(*target),
                          "center": None if center is None else point(*center)})
        manifest.append({"item_id": item, "image_uri": save_png(scene["image"], f"{item}.png"),
                         "prompt": scene["prompt"], "editable_mask_uri": None, "drags": drags,
                         "params": None})
    write_manifest(manifest, str(HERE / "manifest.parquet"))


if __name__ == "__main__":
    main()
