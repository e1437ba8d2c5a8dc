"""`oracle`: the expected image sent through the model's own VAE and the edit's output path
(its crop, checks and paste included). No method can do better through this VAE at this
working size, so its scores are the ceiling every figure is read against."""

from __future__ import annotations

import torch
from PIL import Image

from dragnext.config import EditConfig
from dragnext.crop import crop_box, crop_item, uncrop
from dragnext.instruction import EditItem
from dragnext.model import DragModel
from dragnext.resize import image_to_tensor
from dragnext.stages import Batch, decode_images, prepare

NAME = "oracle"


@torch.no_grad()
def oracle_image(model: DragModel, item: EditItem, expected: Image.Image, config: EditConfig) -> Image.Image:
    box = crop_box(item, config.working_side(model.architecture), config.crop)
    edited = item if box is None else crop_item(item, box)
    batch = Batch([edited], model, config, lambda stage, done, total: None)
    [prepared] = prepare(batch, [])
    z_0 = model.encode(image_to_tensor(expected if box is None else expected.crop(box.corners),
                                       prepared.size).to(model.device))
    [decoded] = decode_images(batch, [{"prepare": prepared, "denoise": z_0}])
    if isinstance(decoded, BaseException):
        raise decoded
    return decoded.image if box is None else uncrop(item, box, decoded.image, decoded.weight)[0]
