"""Image fidelity metrics of SPEC §4 (the paper's NextBench, App. C).

    IF_ed = 1 − d(x[1−M], x̄[1−M])                      fidelity outside the editable area ↑
    IF_hh = 1 − mean_i d(x[ϑ_i], x̄[ϑ_i])               content left the handle ↓
    IF_th = 1 − mean_i d(x[ϑ_i], T_1⁻¹(x̄)[ϑ_i])        content arrived at the target ↑

The paper's d is AlexNet-LPIPS, whose weights cannot be had here. The distance used is
d = 1 − SSIM averaged over the region's pixels, and every key carries its name
(`if_ed_ssim`), so no number passes for LPIPS.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dragnext.geometry import sample
from dragnext.instruction import EditItem
from dragnext.resize import rgb_tensor

DISTANCE = "ssim"


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM of images in [0, 1], (N, C, H, W) → (N, H, W), mean over channels."""
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = (g / g.sum())[None, :] * (g / g.sum())[:, None]
    kernel = g.expand(x.shape[1], 1, window, window)

    def blur(t):
        return F.conv2d(F.pad(t, [window // 2] * 4, mode="reflect"), kernel, groups=x.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=1)


def region_fidelity(x: torch.Tensor, y: torch.Tensor, region: torch.Tensor) -> float:
    """1 − d on the region: both images zeroed outside it, SSIM averaged over its pixels."""
    keep = region.float()[None, None]
    return float(ssim_map(x * keep, y * keep)[0][region].mean())


def image_fidelity(original: Image.Image, edited: Image.Image, item: EditItem) -> dict[str, float | None]:
    """IF_ed, IF_th, IF_hh for a validated item (input-size images). None where undefined."""
    from dragnext.stages import region_drags

    if edited.size != original.size:
        raise ValueError(f"edited image is {edited.size}, original is {original.size}")
    x, y = rgb_tensor(original) / 255, rgb_tensor(edited) / 255
    outside = torch.from_numpy(~item.editable)
    drags = region_drags(item, (original.height, original.width))
    handle_scores, target_scores = [], []
    for d in drags:
        y_back = sample(y, d.grid(d.forward(1.0, d.pixels())))  # T_1⁻¹: ρ lands on ϑ
        handle_scores.append(region_fidelity(x, y, d.handle_mask))
        target_scores.append(region_fidelity(x, y_back, d.handle_mask))
    return {
        f"if_ed_{DISTANCE}": region_fidelity(x, y, outside) if outside.any() else None,
        f"if_th_{DISTANCE}": float(np.mean(target_scores)),
        f"if_hh_{DISTANCE}": float(np.mean(handle_scores)),
    }
