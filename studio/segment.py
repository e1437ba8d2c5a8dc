"""A region from a box a person drew: SAM (`transformers.SamModel`) when its weights are in
the local cache, OpenCV's GrabCut otherwise, so the studio works offline."""

from __future__ import annotations

import logging
import threading

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
DEFAULT_SAM = "facebook/sam-vit-base"
GRABCUT_ITERATIONS = 5

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels


def _clipped(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
    x1, y1 = min(width - 1, int(round(x1))), min(height - 1, int(round(y1)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"box {list(box)} is smaller than 3x3 px inside the {width}x{height} image")
    return x0, y0, x1, y1


def grabcut(image: Image.Image, box: Box) -> np.ndarray:
    """The foreground GrabCut finds inside the box (outside it is background by definition)."""
    try:
        import cv2
    except ImportError:
        raise ValueError("segmenting a box needs OpenCV without SAM: pip install 'dragnext[ui]'") from None

    x0, y0, x1, y1 = _clipped(box, image.size)
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    mask = np.zeros(bgr.shape[:2], np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation is random: the same box gives the same mask
    cv2.grabCut(bgr, mask, (x0, y0, x1 - x0 + 1, y1 - y0 + 1), background, foreground,
                GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


class Segmenter:
    """Box → mask. SAM is looked for once, in the local cache only (never downloaded);
    without it every box goes to GrabCut."""

    def __init__(self, sam: str | None = DEFAULT_SAM):
        self.sam_name = sam
        self._sam = None
        self._looked = False
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        return "sam" if self._load() else "grabcut"

    def _load(self):
        with self._lock:
            if not self._looked and self.sam_name:
                self._looked = True
                from transformers import SamModel, SamProcessor

                try:
                    self._sam = (SamModel.from_pretrained(self.sam_name, local_files_only=True).eval(),
                                 SamProcessor.from_pretrained(self.sam_name, local_files_only=True))
                    log.info("segmenting boxes with SAM (%s)", self.sam_name)
                except OSError:
                    log.info("SAM (%s) is not in the local cache: boxes are segmented with GrabCut",
                             self.sam_name)
            return self._sam

    def __call__(self, image: Image.Image, box: Box) -> np.ndarray:
        sam = self._load()
        if sam is None:
            return grabcut(image, box)
        import torch

        model, processor = sam
        x0, y0, x1, y1 = _clipped(box, image.size)
        inputs = processor(image.convert("RGB"), input_boxes=[[[x0, y0, x1, y1]]], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, multimask_output=False)
        masks = processor.image_processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
        return masks[0][0, 0].numpy().astype(bool)
