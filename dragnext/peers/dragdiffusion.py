"""`dragdiffusion`: point-based motion supervision with point tracking at one timestep
(DragDiffusion; SPEC §8 defaults: 80 iterations, Adam lr 0.01, λ 0.1).

Each iteration, for every handle h_i moving towards g_i with d_i = (g_i − h_i)/‖g_i − h_i‖:

    L = Σ_i (2r_m + 1)² · mean_{q ∈ Ω(h_i, r_m), c} |F(q + d_i) − sg(F(q))|
        + λ · Σ |(x_{t−1}(z) − x_{t−1}(z^ref)) ⊙ (1 − M)|₁

(the original's `(2*r_m+1)**2 * F.l1_loss(...)`: a sum over the patch of the channel mean),
then each h_i is tracked to the point of Ω(h_i, r_p) whose features are nearest to the
original features at the first handle. As in the original, a handle within `reached_px`
(2) feature px of its target is no longer supervised, and the optimisation stops once
every handle is. The original's 2 px is 1/128 of its 256-px feature map; on a small
model's map it is a large part of a drag, hence a key.
Only the drags' points are used: region masks and drag types are what this peer lacks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dragnext.config import DragDiffusionConfig
from dragnext.ddim import DDIMSchedule, denoise_step
from dragnext.features import FeatureMap
from dragnext.geometry import RegionDrag
from dragnext.pbsi import Forward, background_loss
from dragnext.resize import resize_soft_mask


def _sample_points(features: FeatureMap, points: torch.Tensor) -> torch.Tensor:
    """Features at (N, 2) sub-pixel points (x, y), as (N, C)."""
    h, w = features.size
    # scalars, not a tensor of them: a new tensor would be copied to the device at each call
    grid = torch.stack([(points[..., 0] + 0.5) * (2 / w) - 1, (points[..., 1] + 0.5) * (2 / h) - 1], dim=-1)
    return features.sample(grid)[0].T


def _square(radius: int, device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def motion_supervision(F_k: FeatureMap, handles: torch.Tensor, targets: torch.Tensor,
                       patch: torch.Tensor, reached_px: float) -> torch.Tensor:
    """Σ over handles not yet reached of (2r_m + 1)² · mean |F(q + d_i) − sg(F(q))|.

    A reached handle is weighted out rather than skipped, so the host never asks the device
    which handles are done."""
    loss = handles.new_zeros((), dtype=torch.float32)
    for handle, target in zip(handles, targets, strict=True):
        remaining = (target - handle).norm()
        active = (remaining >= reached_px).to(loss.dtype)
        q = handle + patch
        moved = _sample_points(F_k, q + (target - handle) / remaining.clamp_min(reached_px))
        loss = loss + active * len(patch) * (moved - _sample_points(F_k, q).detach()).abs().mean()
    return loss


def drag_diffusion(trajectory: list[torch.Tensor], drags: list[RegionDrag], editable: torch.Tensor,
                   schedule: DDIMSchedule, config: DragDiffusionConfig, forward: Forward,
                   on_iteration: Callable[[int], None] | None = None) -> torch.Tensor:
    """Optimise z_T; returns the edited z_T (denoising continues from T)."""
    T = len(trajectory) - 1
    z_ref = trajectory[T]
    outside = 1 - resize_soft_mask(editable, z_ref.shape[-2:]).to(z_ref.device)
    with torch.no_grad():
        eps_ref, F_0 = forward(z_ref, T)
        x_prev_ref = denoise_step(schedule, z_ref, eps_ref, T)
    size = F_0.size
    handles = torch.stack([d.at(size).handle for d in drags]).to(F_0.device)
    targets = torch.stack([d.at(size).target for d in drags]).to(F_0.device)
    F_0_handles = _sample_points(F_0, handles)
    patch, search = _square(config.r_m, F_0.device), _square(config.r_p, F_0.device)
    z = z_ref.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=config.lr)
    for iteration in range(config.iterations):
        eps, F_k = forward(z, T)
        if iteration > 0:
            with torch.no_grad():  # point tracking on this iteration's features
                for i in range(len(drags)):
                    candidates = handles[i].round() + search
                    distance = (_sample_points(F_k, candidates) - F_0_handles[i]).abs().sum(-1)
                    handles[i] = candidates[distance.argmin(dim=0, keepdim=True)][0]  # a 0-d index syncs
        remaining = (targets - handles).norm(dim=-1)
        if (remaining < config.reached_px).all():  # the original's stopping rule: one read a step
            break
        loss = motion_supervision(F_k, handles, targets, patch, config.reached_px)
        if config.lam:
            loss = loss + config.lam * background_loss(denoise_step(schedule, z, eps, T), x_prev_ref, outside)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_iteration:
            on_iteration(iteration + 1)
    return z.detach()
