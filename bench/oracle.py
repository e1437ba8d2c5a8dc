"""`oracle`: the expected image sent through the model's own VAE and the edit's output path
(its checks and paste included). No method can do better through this VAE at this working
size, so its scores are the ceiling every figure is read against."""

from __future__ import annotations

import torch
from PIL import Image

from dragnext.config import EditConfig
from dragnext.instruction import EditItem
from dragnext.model import DragModel
from dragnext.resize import image_to_tensor
from dragnext.stages import Batch, decode_images, prepare

NAME = "oracle"


@torch.no_grad()
def oracle_image(model: DragModel, item: EditItem, expected: Image.Image, config: EditConfig) -> Image.Image:
    batch = Batch([item], model, config, lambda stage, done, total: None)
    [prepared] = prepare(batch, [])
    z_0 = model.encode(image_to_tensor(expected, prepared.size).to(model.device))
    [decoded] = decode_images(batch, [{"prepare": prepared, "denoise": z_0}])
    if isinstance(decoded, BaseException):
        raise decoded
    return decoded.image
