"""How far an edit is from the input moved by its own drags: signals of a wrong shape or
colour in the right place, with no ground truth.

For each drag, x̃ = the input sampled through Π_i(1) is what the handle region's own
pixels look like moved by the drag's geometry (for translate, rotate and scale that is the
moved object itself, up to resampling):

    target_err       = mean |x − x̃| (RGB, 0–255) over ρ_i(1) eroded by 1 px,
                       averaged over the drags: the object arrived, but not as itself
    vacated_residual = share of the vacated pixels (ϑ_i outside every ρ_j(1), eroded by 1 px)
                       still within RESIDUAL_DISTANCE of the input: a ghost left behind

None where a region is empty (a grown or stretched object vacates nothing).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from dragnext.geometry import erode, sample
from dragnext.instruction import EditItem
from dragnext.resize import rgb_tensor

RESIDUAL_DISTANCE = 45.0  # RGB distance, as the benchmark's colour masks: "still looks like it was"


def warp_agreement(original: Image.Image, edited: Image.Image, item: EditItem) -> dict[str, float | None]:
    """`target_err` and `vacated_residual` (module docstring) for a validated item's
    input-size images."""
    from dragnext.stages import region_drags

    x, y = rgb_tensor(original), rgb_tensor(edited)
    drags = region_drags(item, (original.height, original.width))
    targets = [d.target_region(1.0) for d in drags]
    errors = []
    for d, rho in zip(drags, targets, strict=True):
        core = erode(rho)
        core = core if core.any() else rho  # a thin target keeps its 1-px core
        if core.any():
            moved = sample(x, d.correspondence(1.0))
            errors.append(float((y - moved).abs().mean(dim=1)[0][core].mean()))
    vacated = torch.stack([d.handle_mask for d in drags]).any(0) & ~torch.stack(targets).any(0)
    vacated = erode(vacated)
    residual = None
    if vacated.any():
        still = torch.linalg.vector_norm(y - x, dim=1)[0] <= RESIDUAL_DISTANCE
        residual = float(still[vacated].float().mean())
    return {"target_err": float(np.mean(errors)) if errors else None, "vacated_residual": residual}
