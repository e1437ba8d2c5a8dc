"""Edit where the edit is (`crop`): an input larger than the working size is edited on a box
around what its drags touch, with context around it, and the box's edit is pasted back at the
input's resolution. A small object in a big photo gets the working size's pixels, not a
handful of them, and every pixel outside the box is the input's own.

The box: the bounding box of the region the drags' objects pass through (`swept_region`,
handles and final targets included), grown by `crop.margin` of its longer side on each side
and to at least the working size each way (the model never works below the input's own
resolution), then kept inside the image. Several drags share one box.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image

from dragnext.config import CropConfig
from dragnext.geometry import dilate, swept_region
from dragnext.instruction import Drag, EditItem
from dragnext.resize import working_size
from dragnext.stages import paste_outside, paste_weight, region_drags

# The swept region is found at this longer side (a 4 000 px sweep would take gigabytes): on
# handle masks that keep every cell a pixel touches, widened by a cell (a thin part sampled
# between cells), and rounded outwards to the cells, so it holds every pixel the drags move.
SWEEP_SIDE = 512


@dataclass(frozen=True)
class Box:
    """Pixels [left, left + width) × [top, top + height) of the input."""
    left: int
    top: int
    width: int
    height: int

    def to_record(self) -> dict[str, int]:
        return asdict(self)

    @property
    def corners(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.left + self.width, self.top + self.height

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) of an (H, W, …) array of the input."""
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _span(low: float, high: float, least: int, length: int) -> tuple[int, int]:
    """[low, high) grown about its centre to at least `least`, then moved (and cut) into [0, length)."""
    grow = max(0.0, least - (high - low)) / 2
    low, high = math.floor(low - grow), math.ceil(high + grow)
    if low < 0:
        low, high = 0, high - low
    if high > length:
        low, high = max(0, low - (high - length)), length
    return low, high


def crop_box(item: EditItem, side: int, config: CropConfig) -> Box | None:
    """The box `item` is edited on at working side `side`; None when that is the whole image
    (or `config` turns the crop off)."""
    width, height = item.size
    if not config.enabled or max(width, height) <= side:
        return None
    sweep = working_size(width, height, SWEEP_SIDE, 1)
    ys, xs = np.nonzero(dilate(swept_region(region_drags(item, sweep, touched=True)), 1).numpy())
    if len(xs) == 0:
        return None
    cell_y, cell_x = height / sweep[0], width / sweep[1]
    x0, x1 = xs.min() * cell_x, (xs.max() + 1) * cell_x
    y0, y1 = ys.min() * cell_y, (ys.max() + 1) * cell_y
    pad = config.margin * max(x1 - x0, y1 - y0)
    left, right = _span(x0 - pad, x1 + pad, side, width)
    top, bottom = _span(y0 - pad, y1 + pad, side, height)
    if (right - left, bottom - top) == (width, height):
        return None
    return Box(left, top, right - left, bottom - top)


def crop_item(item: EditItem, box: Box) -> EditItem:
    """The item as its box: image, masks and points (handles, targets, centres) moved into it."""
    rows, cols = box.slices

    def moved(point):
        return None if point is None else (point[0] - box.left, point[1] - box.top)

    def drag_in_box(drag: Drag) -> Drag:
        return replace(drag, handle_mask=drag.handle_mask[rows, cols], handle=moved(drag.handle),
                       target=moved(drag.target), center=moved(drag.center))

    instruction = item.instruction
    mask = instruction.editable_mask
    cropped = replace(instruction, drags=tuple(drag_in_box(d) for d in instruction.drags),
                      editable_mask=None if mask is None else mask[rows, cols])
    return replace(item, image=item.image.crop(box.corners), instruction=cropped, photo=None)


def uncrop(item: EditItem, box: Box, edited: Image.Image,
           weight: np.ndarray | None) -> tuple[Image.Image, np.ndarray]:
    """The box's edit (`weight` its weight within the box; None: 1) put back into the input:
    feathered inside the box's edges so no seam shows where the box ends inside the image,
    and the input's own pixels outside it. Returns the image and the edit's weight over it."""
    width, height = item.size
    inside = np.zeros((height, width), bool)
    inside[box.slices] = True
    full = item.image.convert("RGB")
    full.paste(edited, (box.left, box.top))
    # feathered by the box's size, not the picture's: on a big picture that would fade it all out
    edge = paste_weight(inside, max(box.width, box.height))
    image = paste_outside(full, item.image, edge)  # `edited` is already blended within the box
    if weight is not None:
        edge[inside] *= weight.ravel()
    return image, edge
