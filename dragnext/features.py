"""F(z_t): UNet decoder activations captured by forward hooks on `unet.up_blocks[j]`,
upsampled bilinearly to a common size and concatenated over channels."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dragnext.resize import Size


class FeatureHooks:
    def __init__(self, unet: nn.Module, blocks: list[int], size: Size):
        n = len(unet.up_blocks)
        bad = [j for j in blocks if not 0 <= j < n]
        if bad:
            raise ValueError(f"features.blocks: {bad} out of range; the UNet has {n} up_blocks")
        self.blocks, self.size = list(blocks), size
        self._outputs: dict[int, torch.Tensor] = {}
        self._handles = [unet.up_blocks[j].register_forward_hook(self._keeper(j)) for j in blocks]

    def _keeper(self, j: int):
        def keep(_module, _inputs, output):
            self._outputs[j] = output[0] if isinstance(output, tuple) else output
        return keep

    def pop(self) -> torch.Tensor:
        """The features of the last forward pass, (N, ΣC_j, H, W) fp32; clears them."""
        maps = [F.interpolate(self._outputs.pop(j).float(), size=self.size, mode="bilinear",
                              align_corners=False) for j in self.blocks]
        return torch.cat(maps, dim=1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._outputs.clear()


@contextmanager
def feature_hooks(unet: nn.Module, blocks: list[int], size: Size):
    hooks = FeatureHooks(unet, blocks, size)
    try:
        yield hooks
    finally:
        hooks.remove()
