"""`warp`: the drag geometry applied directly to the inverted latent z_T, with no
optimisation (the "predefined mapping" of FastDrag and RegionDrag). Each final target
region ρ_i(1) takes the latent of its source through Π_i(1); the part of a handle region
left empty is refilled with fresh noise for the denoiser to complete."""

from __future__ import annotations

import torch

from dragnext.geometry import RegionDrag, sample


def warp_latent(z_T: torch.Tensor, drags: list[RegionDrag], seed: int = 0) -> torch.Tensor:
    size = tuple(z_T.shape[-2:])
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(z_T.shape, generator=generator).to(z_T) * z_T.std()
    z = z_T.clone()
    for drag in (d.at(size) for d in drags):  # masks select with `where`: boolean indexing syncs
        rho = drag.target_region(1.0).to(z.device)
        vacated = drag.handle_mask.to(z.device) & ~rho
        z = torch.where(vacated, noise, z)
        z = torch.where(rho, sample(z_T, drag.correspondence(1.0).to(z.device)), z)
    return z
