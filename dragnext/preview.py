"""A preview strip for people: original | instruction drawn over it | edited, each panel
enlarged (nearest neighbour, so pixels stay pixels) to at least `MIN_PANEL` px."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from dragnext.instruction import EditItem
from dragnext.stages import region_drags

MIN_PANEL = 256
HANDLE_TINTS = [(255, 80, 80), (80, 160, 255), (80, 220, 120), (250, 200, 60), (200, 100, 255)]


def _arrow(draw: ImageDraw.ImageDraw, start, end, colour, width: int) -> None:
    draw.line([start, end], fill=colour, width=width)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    size = 4 * width
    for side in (-0.45, 0.45):
        tip = (end[0] - size * math.cos(angle + side), end[1] - size * math.sin(angle + side))
        draw.line([end, tip], fill=colour, width=width)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay(item: EditItem) -> Image.Image:
    """The input with the area outside M darkened, handle regions tinted, where each region
    lands (ρ(1)) outlined, and each drag drawn as an arrow. A rotate or scale also marks its
    centre; a scale joins the centre to the handle, the line it scales along."""
    base = np.asarray(item.image.convert("RGB"), dtype=np.float32)
    base[~item.editable] *= 0.35
    size = (item.image.height, item.image.width)
    for i, (drag, region) in enumerate(zip(item.instruction.drags, region_drags(item, size), strict=True)):
        tint = np.array(HANDLE_TINTS[i % len(HANDLE_TINTS)], dtype=np.float32)
        base[drag.handle_mask] = 0.5 * base[drag.handle_mask] + 0.5 * tint
        base[_outline(region.target_region(1.0).numpy())] = tint
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 200))
    for i, drag in enumerate(item.instruction.drags):
        colour = HANDLE_TINTS[i % len(HANDLE_TINTS)]
        _arrow(draw, drag.handle, drag.target, (255, 255, 255), width + 2)
        _arrow(draw, drag.handle, drag.target, colour, width)
        if drag.center is not None:
            r = 3 * width
            cx, cy = drag.center
            if drag.type == "scale":
                draw.line([drag.center, drag.handle], fill=colour, width=max(1, width // 2))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=width)
    return image


def enlarge(image: Image.Image) -> Image.Image:
    """The image scaled by the whole factor that brings its longer side to ≥ `MIN_PANEL` px."""
    factor = max(1, math.ceil(MIN_PANEL / max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def preview(item: EditItem, edited: Image.Image) -> Image.Image:
    panels = [enlarge(p) for p in (item.image.convert("RGB"), overlay(item), edited.convert("RGB"))]
    width, height = panels[0].size
    gap = max(2, width // 64)
    strip = Image.new("RGB", (3 * width + 2 * gap, height), (255, 255, 255))
    for i, panel in enumerate(panels):
        strip.paste(panel, (i * (width + gap), 0))
    return strip
