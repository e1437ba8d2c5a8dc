"""Region drag geometry (SPEC §2): the maps T_η, the progress η(t, k), the intermediate
target region ρ(η) and the correspondence Π, all as pure tensor code.

A `RegionDrag` lives at one resolution; `.at(size)` moves it to another (image, features,
latent). ρ and Π are computed by inverse mapping: p' ∈ ρ(η) iff ϑ(T_η⁻¹(p')) is set, and
Π(p') = T_η⁻¹(p') is a `grid_sample` grid.

The maps, for a drag with handle h, target g and (rotate, scale, anchored deform) centre c:
- translate, deform: T_η(p) = p + η(g − h);
- deform with an anchor c (a stretch or bend): T_η(p) = p + η w(p)(g − h), where
  w(p) = clamp(σ(p), 0, 1) and σ(p) = (p − c)·(h − c)/|h − c|²: no motion at the anchor,
  full motion at the handle and beyond, linear along the anchor-to-handle axis in between.
  With δ = σ(g) − 1 the axis coordinate maps as σ' = σ(1 + ηδ) on [0, 1], so T_η is one to
  one while 1 + δ > 0 (g on the handle's side of the anchor), and T_η⁻¹ inverts σ piecewise;
- rotate: T_η(p) = c + R(ηθ)(p − c), θ the signed angle from h − c to g − c;
- scale: T_η(p) = c + (1 + η(s − 1)) ⊙ (p − c), T_η⁻¹(p') = c + (p' − c) ⊘ (1 + η(s − 1)),
  with s = (s_x, s_y) fixed at the input image's resolution:
  - `axis: "uniform"` (the default): s_x = s_y = |g − c| / |h − c|. Only the distance of g
    from c counts; a g off the ray from c through h is accepted with a warning.
  - `axis: "free"`: s_x = (g_x − c_x)/(h_x − c_x) and s_y = (g_y − c_y)/(h_y − c_y), so T_1
    carries h exactly onto g. Each factor must be positive (no mirroring), which needs h to
    differ from c on both axes; a factor of 1 leaves that axis alone.
  Every factor lies in [1/4, 4] and not all are 1. Scaling commutes with resizing the
  image on each axis, so the factors hold at every resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dragnext.resize import Size, resize_mask, scale_point


def eta(t: int, k: int, T: int, T_prime: int, K: int, steps: int | None = None) -> float:
    """Progress of iteration k (1..K) at denoising step t (T..T'), paper Eq. 5. With `steps`,
    η grows over that many steps only (all of them when there are fewer), reaching 1 at the
    last iteration of step T − steps + 1, and is held at 1 after."""
    pbsi_steps = T - T_prime + 1
    return min(1.0, (K * (T - t) + k) / (K * min(steps or pbsi_steps, pbsi_steps)))


SCALE_RANGE = (0.25, 4.0)
SCALE_AXES = ("uniform", "free")


def scale_factors(handle, target, center, axis: str = "uniform") -> tuple[float, float]:
    """(s_x, s_y) of a scale drag; points are (x, y) pairs. See the module docstring."""
    (hx, hy), (gx, gy), (cx, cy) = ((float(v) for v in p) for p in (handle, target, center))
    if axis == "free":
        return (gx - cx) / (hx - cx), (gy - cy) / (hy - cy)
    s = math.hypot(gx - cx, gy - cy) / math.hypot(hx - cx, hy - cy)
    return s, s


def rotation(angle: float | torch.Tensor) -> torch.Tensor:
    angle = torch.as_tensor(angle, dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])


@dataclass(frozen=True)
class RegionDrag:
    type: str
    handle_mask: torch.Tensor  # ϑ, bool (H, W)
    handle: torch.Tensor  # h, (2,) float64 (x, y)
    target: torch.Tensor  # g
    center: torch.Tensor | None = None  # c, rotate and scale only
    axis: str = "uniform"  # scale only
    factor: tuple[float, float] | None = None  # s = (s_x, s_y), scale only; from the points if None

    def __post_init__(self):
        if self.type == "scale" and self.factor is None:
            factor = scale_factors(self.handle, self.target, self.center, self.axis)
            object.__setattr__(self, "factor", factor)

    @property
    def size(self) -> Size:
        return tuple(self.handle_mask.shape)

    @property
    def theta(self) -> float:
        """Signed angle from (h − c) to (g − c)."""
        a, b = self.handle - self.center, self.target - self.center
        return math.atan2(float(a[0] * b[1] - a[1] * b[0]), float(a @ b))

    def at(self, size: Size) -> RegionDrag:
        if tuple(size) == self.size:
            return self
        move = lambda p: None if p is None else scale_point(p, self.size, size)
        return RegionDrag(self.type, resize_mask(self.handle_mask, size), move(self.handle),
                          move(self.target), move(self.center), self.axis, self.factor)

    def _stretch(self, eta: float, like: torch.Tensor) -> torch.Tensor:
        """1 + η(s − 1), per axis."""
        return 1 + eta * (like.new_tensor(self.factor) - 1)

    def forward(self, eta: float, p: torch.Tensor) -> torch.Tensor:
        """T_η(p) for points p of shape (..., 2)."""
        if self.type == "rotate":
            return self.center + (p - self.center) @ rotation(eta * self.theta).T
        if self.type == "scale":
            return self.center + (p - self.center) * self._stretch(eta, p)
        if self.type == "deform" and self.center is not None:
            return p + eta * self._axial(p).clamp(0, 1)[..., None] * (self.target - self.handle)
        return p + eta * (self.target - self.handle)

    def inverse(self, eta: float, p: torch.Tensor) -> torch.Tensor:
        """T_η⁻¹(p') for points p' of shape (..., 2)."""
        if self.type == "rotate":
            return self.center + (p - self.center) @ rotation(-eta * self.theta).T
        if self.type == "scale":
            return self.center + (p - self.center) / self._stretch(eta, p)
        if self.type == "deform" and self.center is not None:
            sigma, grown = self._axial(p), 1 + eta * (self._axial(self.target) - 1)
            source = torch.where(sigma <= 0, sigma, torch.where(sigma <= grown, sigma / grown,
                                                                 sigma - (grown - 1)))
            return p - eta * source.clamp(0, 1)[..., None] * (self.target - self.handle)
        return p - eta * (self.target - self.handle)

    def _axial(self, p: torch.Tensor) -> torch.Tensor:
        """σ(p): 0 at the anchor, 1 at the handle, along the anchor-to-handle axis."""
        axis = self.handle - self.center
        return (p - self.center) @ axis / (axis @ axis)

    def pixels(self) -> torch.Tensor:
        """Every pixel p of the grid, (H, W, 2) as (x, y)."""
        h, w = self.size
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing="ij")
        return torch.stack([xs, ys], dim=-1)

    def grid(self, points: torch.Tensor) -> torch.Tensor:
        """(H, W, 2) points as a (1, H, W, 2) `grid_sample` grid (align_corners=False)."""
        h, w = self.size
        return ((points + 0.5) * points.new_tensor([2.0 / w, 2.0 / h]) - 1.0).float()[None]

    def correspondence(self, eta: float) -> torch.Tensor:
        """Π: for every pixel p', where to sample its source T_η⁻¹(p')."""
        return self.grid(self.inverse(eta, self.pixels()))

    def target_region(self, eta: float) -> torch.Tensor:
        """ρ(η) = T_η(ϑ), bool (H, W)."""
        return sample(self.handle_mask.float()[None, None], self.correspondence(eta))[0, 0] >= 0.5


def swept_region(drags: list[RegionDrag], poses: int = 9) -> torch.Tensor:
    """S = ∪_i ∪_η ρ_i(η) over η ∈ {0, 1/(poses−1), …, 1}: all the drags pass through."""
    return torch.stack([d.target_region(j / (poses - 1)) for d in drags for j in range(poses)]).any(0)


def settled_region(drags: list[RegionDrag]) -> torch.Tensor:
    """∪_i ρ_i(1) ∪ ϑ_i: where the drags' objects end and start."""
    return torch.stack([r for d in drags for r in (d.target_region(1.0), d.handle_mask)]).any(0)


def dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    """A bool (H, W) mask grown by `px` pixels (a square neighbourhood)."""
    if px <= 0:
        return mask
    grown = F.max_pool2d(mask.float()[None, None], 2 * px + 1, stride=1, padding=px)[0, 0]
    return grown > 0


def erode(mask: torch.Tensor, px: int = 1) -> torch.Tensor:
    """A bool (H, W) mask shrunk by `px` pixels (a square neighbourhood)."""
    return ~dilate(~mask, px)


def sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of (N, C, H, W) at a grid from `RegionDrag.correspondence`."""
    return F.grid_sample(x, grid.to(x.dtype).expand(x.shape[0], -1, -1, -1),
                         mode="bilinear", padding_mode="zeros", align_corners=False)
