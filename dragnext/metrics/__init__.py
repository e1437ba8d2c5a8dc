"""Edit quality: image fidelity (SPEC §4) and, where the exact result is known, agreement
with the ground truth."""

from dragnext.metrics.fidelity import DISTANCE, image_fidelity, ssim_map
from dragnext.metrics.ground_truth import (
           DragScore,
           centroid,
           colour_mask,
           iou,
           region_psnr,
           region_ssim,
           score_drag,
           score_edit,
)
from dragnext.metrics.warp_agreement import warp_agreement

__all__ = ["DISTANCE", "DragScore", "centroid", "colour_mask", "image_fidelity", "iou", "region_psnr",
           "region_ssim", "score_drag", "score_edit",
           "ssim_map", "warp_agreement"]
