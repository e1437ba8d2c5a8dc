"""F(z_t): UNet decoder activations captured by forward hooks on `unet.up_blocks[j]`,
upsampled bilinearly to a common size and concatenated over channels.

The upsampled map is never made: at SD1.5's 512 px it is 640 × 256 × 256 fp32 with the
default block (168 MB per sample; 923 MB with every block), written and read again (with
its gradient) at every PBSI iteration,
while the losses read it only inside ρ(η). `FeatureMap` keeps the blocks' own maps and
upsamples at the points read, exactly: bilinear upsampling with align_corners=False is
`grid_sample` of the small map at the big map's pixel centres, border-clamped."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dragnext.resize import Size


@dataclass(frozen=True)
class FeatureMap:
    """F as its blocks' maps (N, C_j, h_j, w_j), read as if upsampled to `size` (H, W)."""
    maps: tuple[torch.Tensor, ...]
    size: Size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.maps[0].shape[0], sum(m.shape[1] for m in self.maps), *self.size)

    @property
    def device(self) -> torch.device:
        return self.maps[0].device

    def __getitem__(self, items: slice) -> FeatureMap:
        return FeatureMap(tuple(m[items] for m in self.maps), self.size)

    def detach(self) -> FeatureMap:
        return FeatureMap(tuple(m.detach() for m in self.maps), self.size)

    def at(self, pixels: torch.Tensor) -> torch.Tensor:
        """The upsampled map at pixels (P, 2) of the (H, W) grid, as (x, y): (N, ΣC_j, P) fp32."""
        h, w = self.size
        grid = torch.stack([(2 * pixels[:, 0] + 1) / w - 1, (2 * pixels[:, 1] + 1) / h - 1], dim=-1)
        grid = grid.float()[None, None].expand(self.maps[0].shape[0], -1, -1, -1)
        return torch.cat([F.grid_sample(m.float(), grid, mode="bilinear", padding_mode="border",
                                        align_corners=False)[:, :, 0] for m in self.maps], dim=1)

    def sample(self, grid: torch.Tensor) -> torch.Tensor:
        """`grid_sample` of the upsampled map (bilinear, zero padding, align_corners=False) at
        a (P, 2) grid of normalised points: (N, ΣC_j, P). It reads the 4 pixels around each."""
        h, w = self.size
        u, v = ((grid[:, 0] + 1) * w - 1) / 2, ((grid[:, 1] + 1) * h - 1) / 2
        x0, y0 = u.floor(), v.floor()
        corners = [(x0 + dx, y0 + dy) for dy in (0, 1) for dx in (0, 1)]
        weights = torch.stack([(1 - (u - x).abs()) * (1 - (v - y).abs())
                               * ((x >= 0) & (x < w) & (y >= 0) & (y < h)) for x, y in corners])
        values = self.at(torch.cat([torch.stack([x.clamp(0, w - 1), y.clamp(0, h - 1)], dim=-1)
                                    for x, y in corners]))
        return (values.unflatten(2, (4, -1)) * weights.float()).sum(dim=2)


@dataclass(frozen=True, eq=False)
class _Keep:
    """A forward hook keeping block j's output: an object of one class, which the guards of a
    compiled UNet (`dragnext.engine`) on its hooks match from one stage's hooks to the next's,
    so a stage's new hooks reuse the graph compiled for the last one's."""
    outputs: dict
    j: int

    def __call__(self, _module, _inputs, output) -> None:
        self.outputs[self.j] = output[0] if isinstance(output, tuple) else output


class FeatureHooks:
    def __init__(self, unet: nn.Module, blocks: list[int], size: Size):
        n = len(unet.up_blocks)
        bad = [j for j in blocks if not 0 <= j < n]
        if bad:
            raise ValueError(f"features.blocks: {bad} out of range; the UNet has {n} up_blocks")
        self.blocks, self.size = list(blocks), tuple(size)
        self._outputs: dict[int, torch.Tensor] = {}
        self._handles = [unet.up_blocks[j].register_forward_hook(_Keep(self._outputs, j)) for j in blocks]

    def pop(self) -> FeatureMap:
        """The features of the last forward pass, copied (a captured graph's outputs are
        overwritten by its next replay, and F(z_t^ref) is read through a whole PBSI step);
        clears them."""
        return FeatureMap(tuple(self._outputs.pop(j).clone() for j in self.blocks), self.size)

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
