"""Progressive Backward Self-Intervention (SPEC §3 step 5): solve Latent Region
Optimisation over the denoising steps t = T … T' by Adam on z_t itself.

    L = Σ_i mean_{p' ∈ ρ_i(η)} |F(z_t^k)(p') − sg(F(z_t^ref))(Π_i(p'))|₁
        + λ · Σ |(x_{t−1}(z_t^k) − x_{t−1}(z_t^ref)) ⊙ (1 − M)|₁

with η = η(t, k) growing to 1 at the last iteration of step T'. The model is reached only
through `forward(z, t) -> (ε, F)`, one UNet pass giving the noise prediction and the
features together, so the λ term costs no extra pass and tests can stand in for the UNet.

Options beyond the paper (`PbsiConfig`; the paper's behaviour is the default):
- `loss`: the region term on F (paper), on the predicted clean latent
  x̂₀ = (z_t − √(1−ᾱ_t) ε)/√ᾱ_t upsampled to F's size (orientation and extent live in x̂₀
  where a few feature cells cannot hold them), or on both, x̂₀'s weighted by `x0_weight`;
- `init`: start from z_T (paper) or from z_T warped by the drags' final maps (`z_init`);
- `vacate`: leave the handle region a drag vacates, V(η) = ∪ handle_i ∖ ∪ ρ_i(η), to the
  denoiser (paper), or add  w · mean_{p ∈ V(η)} |x̂₀(z_t^k)(p) − B(p)|₁  where B is the
  reference x̂₀ with the handle regions filled in from their surroundings: the object's
  old pose is cleared towards the background instead of persisting;
- `x0_reference`: what the x̂₀ terms (region, vacated, keep) compare with. `predicted`:
  the reference's own x̂₀(z_t^ref), the denoiser's guess at step t, which at PBSI's noise
  levels is blurred and can be off in colour (a thin bar is faint in it). `clean`: the
  input's own latent z_0 (the inversion's first state), bilinearly upsampled to F's size,
  so the target is the object as it is, at every step;
- `keep_weight` w_K: inside M the paper constrains only ρ(η) and leaves the rest free, so
  whatever else lies in a generous editable mask (a neighbouring object) is re-rendered
  from the prior. The keep term holds it:

      L_keep = w_K · mean_{p ∈ K} |x̂₀(z_t^k)(p) − sg(X_t)(p)|₁,
      K = M ∖ D(S),  S = ∪_i ∪_{η ∈ [0, 1]} ρ_i(η),

  where X_t is the `x0_reference`, S the region the drags sweep (handles, targets and the
  path between, ρ sampled at 9 values of η), and D widens a region by one feature pixel
  (`KEEP_MARGIN`), so the outline of what moves may soften into its surroundings. K does
  not depend on η: a keep region that shrank with ρ(η) would hold the final target to
  the background until the last iteration, against the region term. Without
  it the free part of M drifts further at every step: Adam moves each element of z_t by
  about lr per iteration however small its gradient, so where no term holds a pixel it
  random-walks: on the fixture's deform cases `python -m bench.trace` shows the keep
  distance growing from 0.4 to 2.2 over the six PBSI steps without the term, and staying
  at 0.1–0.3 with it. Outside M the λ term already holds the image; the handle regions
  and ρ(η) are the region and vacated terms' own.
- `keep_path`: K also takes in the path the drags sweep, except where the object is now,
  where it ends and where it starts:

      K(η) = M ∖ D(∪_i ρ_i(η) ∪ ρ_i(1) ∪ ϑ_i),

  so what ρ(η) leaves behind on its way is held to the reference too (a rotation about an
  end sweeps a wide arc, and the denoiser otherwise leaves a trail of the object along it).
  The final target ρ(1) stays out of K from the first iteration, so the object is never
  held back from where it is going; the handle regions stay out, so the vacated term
  decides them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dragnext.config import PbsiConfig
from dragnext.ddim import DDIMSchedule, denoise_step, predict_x0
from dragnext.device_traffic import upload
from dragnext.features import FeatureMap
from dragnext.geometry import RegionDrag, dilate, eta, settled_region, swept_region
from dragnext.resize import resize_soft_mask

Forward = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
KEEP_MARGIN = 1  # feature px


Region = tuple[torch.Tensor, int]  # a bool mask on the device, and its pixel count (on the host)


@dataclass(frozen=True)
class Target:
    """ρ_i(η) as pixels (x, y) of F's grid, Π_i(η) at them as normalised `grid_sample` points,
    and each pixel's weight in the mean: 1/|ρ_i(η)|, and 0 for the padding that gives a drag
    the same number of points at every η (static shapes)."""
    pixels: torch.Tensor  # (P, 2)
    sources: torch.Tensor  # (P, 2)
    weight: torch.Tensor  # (P,)


@dataclass(frozen=True)
class Geometry:
    """What the loss terms need of one item's drags at one η, on the device: each drag's
    `Target`, the vacated region V(η) and the keep region K (None when their terms are off).
    Counts are kept on the host, so a mean is a weighted sum and never waits for the device."""
    targets: list[Target]
    vacated: Region | None = None
    keep: Region | None = None


def _points(drag: RegionDrag, eta_: float) -> torch.Tensor:
    """(|ρ(η)|, 4): the pixels of ρ(η) as (x, y) and Π(η) there."""
    rho = drag.target_region(eta_)
    ys, xs = rho.nonzero(as_tuple=True)
    sources = drag.correspondence(eta_)[0][rho]
    return torch.cat([torch.stack([xs, ys], dim=-1).double(), sources.double()], dim=-1)


def _padded(points: torch.Tensor, size: int) -> torch.Tensor:
    """(size, 5): the points with their weight 1/count, then zero-weight rows."""
    rows = torch.zeros(size, 5, dtype=torch.float64)
    rows[:len(points), :4] = points
    rows[:len(points), 4] = 1 / max(len(points), 1)
    return rows


def geometry_plan(drags: list[RegionDrag], progresses: list[float], device: torch.device,
                  handles: torch.Tensor | None = None, keep: Callable[[float], torch.Tensor] | None = None
                  ) -> list[Geometry]:
    """An item's `Geometry` at each η of `progresses` (every PBSI iteration of the edit, in
    order), built on the host in float64 and uploaded in two copies before the first, so no
    iteration uploads or syncs. `handles` (∪ handle_i) turns on V(η); `keep(η)` gives K at η."""
    unique = sorted(set(progresses))
    points = {(eta_, i): _points(d, eta_) for eta_ in unique for i, d in enumerate(drags)}
    most = [max(1, *(len(points[eta_, i]) for eta_ in unique)) for i in range(len(drags))]
    rows = torch.cat([_padded(points[eta_, i], most[i]) for eta_ in unique for i in range(len(drags))])
    masks, index = [], {}
    for eta_ in unique:
        index[eta_] = len(masks)
        if handles is not None:
            masks.append(handles & ~torch.stack([d.target_region(eta_) for d in drags]).any(0))
        if keep is not None:
            masks.append(keep(eta_))
    counts = [int(m.sum()) for m in masks]
    rows_d = upload(rows.float(), device)
    masks_d = upload(torch.stack(masks), device) if masks else None
    offsets = [0]
    for _ in unique:
        for size in most:
            offsets.append(offsets[-1] + size)

    def at(u: int, eta_: float) -> Geometry:
        targets = []
        for i in range(len(drags)):
            start = offsets[u * len(drags) + i]
            r = rows_d[start:start + most[i]]
            targets.append(Target(r[:, :2], r[:, 2:4], r[:, 4]))
        j, vacated = index[eta_], None
        if handles is not None:
            vacated, j = (masks_d[j], counts[j]), j + 1
        return Geometry(targets, vacated, (masks_d[j], counts[j]) if keep is not None else None)

    planned = {eta_: at(u, eta_) for u, eta_ in enumerate(unique)}
    return [planned[p] for p in progresses]


def region_loss(F_k: FeatureMap, F_ref: FeatureMap, geometry: Geometry) -> torch.Tensor:
    """Σ_i mean over ρ_i(η) of the channel-L1 distance to the reference sampled through Π_i,
    F read at ρ_i(η)'s points only."""
    loss = F_k.maps[0].new_zeros((), dtype=torch.float32)
    for target in geometry.targets:
        distance = (F_k.at(target.pixels) - F_ref.sample(target.sources)).abs().sum(dim=1)[0]
        loss = loss + (distance * target.weight).sum()
    return loss


def _masked_mean(distance: torch.Tensor, region: Region) -> torch.Tensor:
    """mean of `distance` over a non-empty region, as a masked sum: no device sync."""
    mask, count = region
    return (distance * mask.to(distance.dtype)).sum() / count


def background_loss(x_prev: torch.Tensor, x_prev_ref: torch.Tensor,
                    outside: torch.Tensor) -> torch.Tensor:
    """Σ |(x_{t−1}(z_t^k) − x_{t−1}(z_t^ref)) ⊙ (1 − M)|₁ at latent resolution."""
    return ((x_prev - x_prev_ref) * outside).abs().sum()


def _handle_union(drags: list[RegionDrag]) -> torch.Tensor:
    """∪ handle_i, on the host."""
    return torch.stack([d.handle_mask for d in drags]).any(0)


def vacated_loss(x0_k: torch.Tensor, background: torch.Tensor, vacated: Region) -> torch.Tensor:
    """mean over V(η) = ∪ handle_i ∖ ∪ ρ_i(η) of the channel-L1 distance to B."""
    if not vacated[1]:
        return x0_k.new_zeros(())
    return _masked_mean((x0_k - background).abs().sum(dim=1)[0], vacated)


def keep_region(editable: torch.Tensor, swept: torch.Tensor) -> torch.Tensor:
    """K = M ∖ D(S): D widens by `KEEP_MARGIN` px."""
    return editable & ~dilate(swept, KEEP_MARGIN)


def held_out(drags: list[RegionDrag], keep_path: bool) -> torch.Tensor:
    """The part of what K leaves out that does not depend on η: the swept region S, or with
    `keep_path` where the objects start and end."""
    return settled_region(drags) if keep_path else swept_region(drags)


def keep_at(editable: torch.Tensor, fixed: torch.Tensor, drags: list[RegionDrag], progress: float,
            keep_path: bool) -> torch.Tensor:
    """K at η: M ∖ D(S), or with `keep_path` M ∖ D(∪ ρ_i(η) ∪ ρ_i(1) ∪ ϑ_i); `fixed` is `held_out`."""
    if not keep_path:
        return keep_region(editable, fixed)
    return keep_region(editable, torch.stack([fixed, *(d.target_region(progress) for d in drags)]).any(0))


def keep_loss(x0_k: torch.Tensor, reference: torch.Tensor, keep: Region) -> torch.Tensor:
    """mean over K of the channel-L1 distance to the reference."""
    if not keep[1]:
        return x0_k.new_zeros(())
    return _masked_mean((x0_k - reference).abs().sum(dim=1)[0], keep)


def _rings(known: torch.Tensor) -> list[torch.Tensor] | None:
    """The rings `fill_in` fills, outwards from the known area, found on the host (they depend
    on the mask alone, so the device never decides when to stop); None when nothing is known."""
    k = known.float()[None, None]
    rings = []
    while not bool(k.all()):
        grow = (F.avg_pool2d(k, 3, stride=1, padding=1) > 0) & (k == 0)
        if not bool(grow.any()):
            return None
        rings.append(grow)
        k = torch.where(grow, torch.ones_like(k), k)
    return rings


@dataclass(frozen=True)
class Fill:
    """How `fill_in` fills an unknown area: the known mask and its rings, on the device."""
    known: torch.Tensor  # (1, 1, h, w) float
    rings: torch.Tensor | None  # (n, 1, 1, h, w) bool, outwards; None: nothing known to fill from

    @classmethod
    def of(cls, known: torch.Tensor, device: torch.device) -> Fill:
        rings = _rings(known)
        if rings is not None:
            rings = torch.stack(rings) if rings else torch.zeros((0, 1, 1, *known.shape), dtype=torch.bool)
        return cls(known.float()[None, None].to(device), None if rings is None else rings.to(device))


def fill_in(x: torch.Tensor, known: torch.Tensor | Fill) -> torch.Tensor:
    """x with its unknown pixels filled ring by ring, each the mean of its known 3×3
    neighbours, from the border of the known area inwards. `known`: a host mask, or its
    `Fill` planned once (then no upload or sync)."""
    plan = known if isinstance(known, Fill) else Fill.of(known, x.device)
    if plan.rings is None:  # nothing known to fill from
        return x
    k = plan.known.to(x.dtype)
    filled = x * k
    for grow in plan.rings:
        weight = F.avg_pool2d(k, 3, stride=1, padding=1)
        mean = F.avg_pool2d(filled, 3, stride=1, padding=1) / weight.clamp_min(1e-12)
        filled = torch.where(grow, mean, filled)
        k = torch.where(grow, torch.ones_like(k), k)
    return filled


def x0_at(schedule: DDIMSchedule, z_t: torch.Tensor, eps: torch.Tensor, t: int,
          size: tuple[int, int]) -> torch.Tensor:
    """x̂₀ of (z_t, ε) at step t, bilinearly upsampled to F's `size`."""
    alpha = schedule.alphas[t].to(z_t.device, z_t.dtype)
    return F.interpolate(predict_x0(z_t, eps, alpha), size=size, mode="bilinear", align_corners=False)


def x0_reference(schedule: DDIMSchedule, z_ref: torch.Tensor, eps_ref: torch.Tensor, t: int,
                 size: tuple[int, int], z_0: torch.Tensor, reference: str) -> torch.Tensor:
    """What the x̂₀ terms compare with at step t, at F's size: the reference's own x̂₀
    (`predicted`) or the input's clean latent z_0 (`clean`)."""
    if reference == "clean":
        return F.interpolate(z_0, size=size, mode="bilinear", align_corners=False)
    return x0_at(schedule, z_ref, eps_ref, t, size)


def keep_of(drags_f: list[RegionDrag], editable: torch.Tensor, feature_size: tuple[int, int],
            config: PbsiConfig) -> Callable[[float], torch.Tensor] | None:
    """K as a function of η, at F's size (None with the keep term off). Neither M nor the
    swept and settled regions depend on t, so this is made once per edit."""
    if config.keep_weight <= 0:
        return None
    M_f = resize_soft_mask(editable, feature_size) >= 0.5
    fixed = held_out(drags_f, config.keep_path)
    if not config.keep_path:  # K does not depend on η
        K = keep_region(M_f, fixed)
        return lambda progress: K
    return lambda progress: keep_at(M_f, fixed, drags_f, progress, config.keep_path)


def item_geometry(drags_f: list[RegionDrag], editable: torch.Tensor, progresses: list[float],
                  device: torch.device, config: PbsiConfig, handles_f: torch.Tensor | None,
                  feature_size: tuple[int, int]) -> list[Geometry]:
    """One item's `Geometry` at the given PBSI iterations, at F's resolution (that of `drags_f`)."""
    keep = keep_of(drags_f, editable, feature_size, config)
    return geometry_plan(drags_f, progresses, device, handles_f, keep)


@dataclass(frozen=True)
class Reference:
    """What a PBSI step's iterations compare with, from the reference pass on z_t^ref: F, the
    DDIM step x_{t−1}, the x̂₀ target at F's size and, with `vacate=fill`, B (None when unused)."""
    F: FeatureMap
    x_prev: torch.Tensor
    x0: torch.Tensor | None
    background: torch.Tensor | None


def iteration_loss(z_t: torch.Tensor, t: int, forward: Forward, schedule: DDIMSchedule, reference: Reference,
                   geometry: list[Geometry], outside: torch.Tensor, config: PbsiConfig) -> torch.Tensor:
    """L of one PBSI iteration at z_t^k: one UNet pass, every item's terms at its `geometry`."""
    features, x0 = config.loss in ("features", "both"), config.loss in ("x0", "both")
    eps, F_k = forward(z_t, t)
    size = F_k.size
    x0_k = x0_at(schedule, z_t, eps, t, size) if reference.x0 is not None else None
    loss = z_t.new_zeros((), dtype=torch.float32)
    for b, here in enumerate(geometry):
        one = slice(b, b + 1)
        if features:
            loss = loss + region_loss(F_k[one], reference.F[one], here)
        if x0:
            loss = loss + config.x0_weight * region_loss(
                FeatureMap((x0_k[one],), size), FeatureMap((reference.x0[one],), size), here)
        if here.vacated is not None:
            loss = loss + config.vacate_weight * vacated_loss(x0_k[one], reference.background[one],
                                                              here.vacated)
        if here.keep is not None:
            loss = loss + config.keep_weight * keep_loss(x0_k[one], reference.x0[one], here.keep)
    if config.lam:
        x_prev = denoise_step(schedule, z_t, eps, t)
        loss = loss + config.lam * background_loss(x_prev, reference.x_prev, outside)
    return loss


def pbsi(trajectory: list[torch.Tensor], drags: list[list[RegionDrag]], editable: list[torch.Tensor],
         schedule: DDIMSchedule, config: PbsiConfig, forward: Forward,
         on_iteration: Callable[[int], None] | None = None,
         z_init: torch.Tensor | None = None) -> torch.Tensor:
    """Optimise z_T … z_T' of a batch of B items and return z_{T'−1}, the DDIM step from
    the optimised z_T'.

    `trajectory` is the inversion [z_0 … z_T], each (B, C, h, w); `drags[b]` and
    `editable[b]` (M) are item b's, at the working image resolution, and are moved to the
    feature and latent resolutions here. The loss is the sum of the items' losses, each
    reading only its own sample, and Adam is elementwise: every item follows the path it
    would follow alone. `z_init` replaces z_T as the start (`init=warp`); the reference
    stays the trajectory.
    """
    T = len(trajectory) - 1
    T_prime = T - config.steps + 1
    latent_size = trajectory[0].shape[-2:]
    M = torch.stack([resize_soft_mask(m, latent_size) for m in editable])[:, None]
    outside = 1 - M.to(trajectory[0].device)
    z_t = (trajectory[T] if z_init is None else z_init).clone()
    vacate = config.vacate == "fill"
    uses_x0 = config.loss in ("x0", "both") or vacate or config.keep_weight > 0
    items = range(z_t.shape[0])
    progresses = [eta(t, k, T, T_prime, config.iterations, config.eta_steps) if config.progressive else 1.0
                  for t in range(T, T_prime - 1, -1) for k in range(1, config.iterations + 1)]

    done = 0
    for t in range(T, T_prime - 1, -1):
        z_ref = trajectory[t]
        with torch.no_grad():
            eps_ref, F_ref = forward(z_ref, t)
            x_prev_ref = denoise_step(schedule, z_ref, eps_ref, t)
            x0_ref = (x0_reference(schedule, z_ref, eps_ref, t, F_ref.size, trajectory[0],
                                   config.x0_reference) if uses_x0 else None)
        if t == T:  # the whole edit's geometry, at F's size (known after the first pass)
            drags_f = [[d.at(F_ref.size) for d in item_drags] for item_drags in drags]
            handles_f = [_handle_union(d) if vacate else None for d in drags_f]
            geometry = [item_geometry(drags_f[b], editable[b], progresses, z_t.device, config, handles_f[b],
                                      F_ref.size) for b in items]
            fills = [Fill.of(~handles_f[b], z_t.device) for b in items] if vacate else None
        background = torch.cat([fill_in(x0_ref[b:b + 1], fills[b]) for b in items]) if vacate else None
        reference = Reference(F_ref, x_prev_ref, x0_ref, background)
        z_t = z_t.detach().requires_grad_(True)
        optimizer = torch.optim.Adam([z_t], lr=config.lr)
        for _ in range(config.iterations):
            loss = iteration_loss(z_t, t, forward, schedule, reference, [g[done] for g in geometry], outside,
                                  config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if on_iteration:
                on_iteration(done)
        with torch.no_grad():
            eps, _ = forward(z_t, t)
            z_t = denoise_step(schedule, z_t.detach(), eps, t)
    return z_t
