"""Moving images, masks and points between the input size, the working size and the
model's internal resolutions (latent, features).

Coordinates follow `grid_sample(align_corners=False)`: pixel centres sit at integer
coordinates and the image spans [-0.5, size - 0.5] on each axis.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Size = tuple[int, int]  # (height, width), as tensors are laid out


def working_size(width: int, height: int, longer_side: int, multiple: int) -> Size:
    """(height, width) with the longer side near `longer_side` and both multiples of `multiple`."""
    scale = longer_side / max(width, height)

    def snap(length: int) -> int:
        return max(multiple, round(length * scale / multiple) * multiple)

    return snap(height), snap(width)


def scale_point(point: torch.Tensor, from_size: Size, to_size: Size) -> torch.Tensor:
    """(x, y) at `from_size` to the same place at `to_size`."""
    (h0, w0), (h1, w1) = from_size, to_size
    factor = point.new_tensor([w1 / w0, h1 / h0])
    return (point + 0.5) * factor - 0.5


def resize_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """A boolean (H, W) mask at `size`; a region that would vanish keeps its touched pixels."""
    if tuple(mask.shape) == tuple(size):
        return mask.bool()
    soft = resize_soft_mask(mask, size)
    hard = soft >= 0.5
    return hard if hard.any() or not mask.any() else soft > 0


def touched_cells(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """A boolean (H, W) mask at `size` with every cell that any pixel of `mask` touches: a
    superset of it, thin parts included (what must not fall outside a box)."""
    return F.adaptive_max_pool2d(mask.float()[None, None], size)[0, 0] > 0


def resize_soft_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """The fraction of each output pixel covered by the mask, as float (H, W)."""
    soft = mask.float()[None, None]
    if soft.shape[-2] >= size[0] and soft.shape[-1] >= size[1]:
        soft = F.interpolate(soft, size=size, mode="area")
    else:
        soft = F.interpolate(soft, size=size, mode="bilinear", align_corners=False, antialias=True)
    return soft[0, 0].clamp(0, 1)


def image_to_tensor(image: Image.Image, size: Size) -> torch.Tensor:
    """An RGB PIL image as a (1, 3, H, W) float tensor in [-1, 1] at `size`."""
    resized = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.LANCZOS)
    array = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def rgb_tensor(image: Image.Image) -> torch.Tensor:
    """An image's RGB values as a (1, 3, H, W) float tensor in 0–255, at its own size."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]


def tensor_to_image(x: torch.Tensor, width: int, height: int) -> Image.Image:
    """A (1, 3, H, W) tensor in [-1, 1] as an RGB PIL image of `width` x `height`."""
    array = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
