"""Agreement of an edit with a known expected image (synthetic benchmarks).

A drag succeeds when the edited object's mask
- overlaps the expected mask with IoU ≥ 0.5,
- has its centroid within 4 px of the expected one, and
- is clearly nearer the expected placement than the original one (IoU with the expected
  mask ≥ IoU with the original mask + 0.1), so an unchanged image never counts as a
  successful small deform or rotate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dragnext.metrics.fidelity import ssim_map

IOU_MIN, CENTROID_MAX_PX, MARGIN = 0.5, 4.0, 0.1


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
