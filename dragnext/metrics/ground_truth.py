"""Agreement of an edit with a known expected image (synthetic benchmarks).

A drag succeeds when the edited object's mask
- overlaps the expected mask with IoU ≥ 0.5,
- has its centroid within 4 px of the expected one, and
- is clearly nearer the expected placement than the original one (IoU with the expected
  mask ≥ IoU with the original mask + 0.1), so an unchanged image never counts as a
  successful small deform or rotate.

`score_edit` scores a whole edit against the expected image: the drag as above
(`success_object`), and what must not change. Each neighbour (another shape the drag must
leave alone, found by its colour) must overlap itself in the expected image with IoU ≥ 0.8
(`neighbour_iou` is the lowest), and `success` needs both. `psnr_keep` is the PSNR to the
expected image inside the editable mask M but away from the object's old and new
footprints (each widened by 2 px for its anti-aliased edge); `psnr_vacated` the PSNR on
what the object leaves: its old footprint outside its new one (widened the same way).

The strict rule (`success_strict`) is what a person accepts: the object's mask overlaps the
expected one with IoU ≥ 0.8 (`iou`), its centroid within 2 px, its colour kept (`colour_err`,
the mean |RGB error| to the expected image inside the expected object eroded by 1 px, at
most 40 of 255), no ghost left behind (`ghost`, the share of the vacated pixels, eroded by
1 px, that still segment as the object, at most 10%), and every neighbour at IoU ≥ 0.9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from dragnext.metrics.fidelity import ssim_map

IOU_MIN, CENTROID_MAX_PX, MARGIN = 0.5, 4.0, 0.1
NEIGHBOUR_IOU_MIN = 0.8
EDGE_PX = 2
STRICT_IOU_MIN, STRICT_CENTROID_MAX_PX, COLOUR_ERR_MAX, GHOST_MAX = 0.8, 2.0, 40.0, 0.1
STRICT_NEIGHBOUR_IOU_MIN = 0.9


def _float(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255


def region_psnr(x: np.ndarray, y: np.ndarray, region: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images over the region's pixels; inf when they agree there."""
    mse = float(((_float(x) - _float(y))[region] ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def region_ssim(x: np.ndarray, y: np.ndarray, region: np.ndarray) -> float:
    def tensor(a):
        return torch.from_numpy(_float(a)).float().permute(2, 0, 1)[None]

    return float(ssim_map(tensor(x), tensor(y))[0].numpy()[region].mean())


def colour_mask(image: np.ndarray, colour: tuple[int, int, int], tolerance: float = 45.0) -> np.ndarray:
    """Pixels within `tolerance` (RGB distance) of `colour`."""
    distance = np.linalg.norm(np.asarray(image, np.float64) - np.array(colour, np.float64), axis=-1)
    return distance <= tolerance


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass(frozen=True)
class DragScore:
    iou_expected: float
    iou_original: float
    centroid_err: float  # px; inf when the object is gone
    success: bool


def score_drag(edited: np.ndarray, expected: np.ndarray, original: np.ndarray) -> DragScore:
    """Score the edited object's mask against the expected and the original placement."""
    c_edit, c_expected = centroid(edited), centroid(expected)
    error = math.inf if c_edit is None or c_expected is None else math.dist(c_edit, c_expected)
    iou_expected, iou_original = iou(edited, expected), iou(edited, original)
    success = (iou_expected >= IOU_MIN and error <= CENTROID_MAX_PX
               and iou_expected >= iou_original + MARGIN)
    return DragScore(iou_expected, iou_original, error, success)


def widened(mask: np.ndarray, px: int = EDGE_PX) -> np.ndarray:
    """`mask` grown by `px` pixels (a square neighbourhood)."""
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * px + 1))
    return np.asarray(grown) > 0


def eroded(mask: np.ndarray, px: int = 1) -> np.ndarray:
    """`mask` shrunk by `px` pixels (a square neighbourhood): its anti-aliased edge dropped."""
    shrunk = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(2 * px + 1))
    return np.asarray(shrunk) > 0


def colour_error(edited: np.ndarray, expected: np.ndarray, region: np.ndarray) -> float:
    """Mean |RGB error| (0–255) over `region`'s pixels; nan when it is empty."""
    if not region.any():
        return math.nan
    return float(np.abs(np.asarray(edited, np.float64) - np.asarray(expected, np.float64))[region].mean())


def score_edit(original: np.ndarray, edited: np.ndarray, expected: np.ndarray,
               colour: tuple[int, int, int], neighbour_colours: list[tuple[int, int, int]],
               editable: np.ndarray) -> dict:
    """The per-case scores of the module docstring; PSNRs are nan where their region is empty."""
    before, after = colour_mask(original, colour), colour_mask(expected, colour)
    drag = score_drag(colour_mask(edited, colour), after, before)
    neighbours = [iou(colour_mask(edited, c), colour_mask(expected, c)) for c in neighbour_colours]
    neighbour_iou = min(neighbours, default=1.0)
    keep = editable & ~widened(before | after)
    vacated = before & ~widened(after)
    core = eroded(after)
    core = core if core.any() else after  # a thin object keeps its 1-px core
    colour_err = colour_error(edited, expected, core)
    left = eroded(before & ~after)
    ghost = float(colour_mask(edited, colour)[left].mean()) if left.any() else 0.0
    strict = (drag.iou_expected >= STRICT_IOU_MIN and drag.centroid_err <= STRICT_CENTROID_MAX_PX
              and colour_err <= COLOUR_ERR_MAX and ghost <= GHOST_MAX
              and neighbour_iou >= STRICT_NEIGHBOUR_IOU_MIN)

    def psnr(region):
        return region_psnr(edited, expected, region) if region.any() else math.nan

    return {"success": float(drag.success and neighbour_iou >= NEIGHBOUR_IOU_MIN),
            "success_object": float(drag.success), "success_strict": float(strict),
            "iou": drag.iou_expected, "colour_err": colour_err, "ghost": ghost,
            "centroid_err": drag.centroid_err,
            "neighbour_iou": neighbour_iou if neighbours else math.nan,
            "psnr_keep": psnr(keep), "psnr_vacated": psnr(vacated)}
