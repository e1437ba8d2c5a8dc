"""Outputs that cannot be right, caught before they are called a success.

An optimiser pushed too hard (a huge λ or learning rate, an overflow in half precision)
produces NaN or infinite latents, which decode to a black or flat image that looks like a
result. An edit is refused when its final latent z_0 is not finite, or when the edited
image is constant (every pixel within `FLAT_STD` grey levels of the mean) although the
input image was not.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

FLAT_STD = 0.5  # grey levels (of 255): below this an image is one flat colour


class EditFailed(RuntimeError):
    """The edit ran to the end, but its output is not an image of the input."""


def check_latent(z: torch.Tensor, name: str) -> None:
    bad = int((~torch.isfinite(z)).sum())
    if bad:
        raise EditFailed(f"{name} has {bad} non-finite values of {z.numel()} (NaN or infinity): "
                         "the optimisation diverged; lower pbsi.lr or pbsi.lam")


def check_image(original: Image.Image, edited: Image.Image) -> None:
    before = np.asarray(original.convert("RGB"), dtype=np.float32).std()
    after = np.asarray(edited.convert("RGB"), dtype=np.float32).std()
    if after < FLAT_STD <= before:
        raise EditFailed(f"the edited image is one flat colour (pixel std {after:.2f}) although the input "
                         f"is not ({before:.1f}): the edit diverged")
