"""Scenes of 1–3 flat-coloured shapes on a flat, gradient or lightly textured background,
rendered with 4×4 supersampling so edges are anti-aliased the same way in every render.

Coordinates are pixels, x right and y down, pixel centres at integers (as in
`dragnext.resize`). A shape is its kind, centre, half-extents (a, b), angle θ and colour;
a point q of its own frame sits at centre + R(θ) q in the image, with R as in
`dragnext.geometry.rotation`, so a rotate drag about c maps a shape exactly to
(c + R(φ)(centre − c), θ + φ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image

Kind = Literal["disc", "square", "rect", "bar", "triangle", "ellipse"]
KINDS: tuple[Kind, ...] = ("disc", "square", "rect", "bar", "triangle", "ellipse")
SUPERSAMPLE = 4

COLOURS = {
    "red": (220, 50, 45), "green": (50, 170, 70), "blue": (45, 90, 220), "yellow": (240, 205, 45),
    "orange": (245, 140, 40), "purple": (140, 70, 190), "white": (240, 240, 240), "black": (25, 25, 25),
    "cyan": (50, 200, 210), "pink": (240, 130, 180),
}


@dataclass(frozen=True)
class Shape:
    kind: Kind
    center: tuple[float, float]
    half: tuple[float, float]  # (a, b): half-width and half-height in the shape's frame
    angle: float  # θ, radians
    colour: str

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which image points (x, y) lie in the shape."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dx, dy = x - self.center[0], y - self.center[1]
        qx, qy = cos * dx + sin * dy, -sin * dx + cos * dy  # R(−θ)(p − centre)
        a, b = self.half
        if self.kind in ("disc", "ellipse"):
            return (qx / a) ** 2 + (qy / b) ** 2 <= 1
        if self.kind == "triangle":  # apex at (0, −b), base from (−a, b) to (a, b)
            t = (qy + b) / (2 * b)
            return (qy <= b) & (np.abs(qx) <= a * t)
        return (np.abs(qx) <= a) & (np.abs(qy) <= b)

    def moved(self, d: tuple[float, float]) -> Shape:
        return replace(self, center=(self.center[0] + d[0], self.center[1] + d[1]))

    def rotated(self, c: tuple[float, float], phi: float) -> Shape:
        cos, sin = math.cos(phi), math.sin(phi)
        dx, dy = self.center[0] - c[0], self.center[1] - c[1]
        return replace(self, center=(c[0] + cos * dx - sin * dy, c[1] + sin * dx + cos * dy),
                       angle=self.angle + phi)

    def scaled(self, c: tuple[float, float], s: float) -> Shape:
        """The shape scaled by s about c: the pose a uniform scale drag maps it to."""
        return replace(self, center=(c[0] + s * (self.center[0] - c[0]), c[1] + s * (self.center[1] - c[1])),
                       half=(s * self.half[0], s * self.half[1]))

    def ends(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two ends of its long (a) axis."""
        ux, uy = math.cos(self.angle) * self.half[0], math.sin(self.angle) * self.half[0]
        return (self.center[0] - ux, self.center[1] - uy), (self.center[0] + ux, self.center[1] + uy)

    def with_end(self, end: tuple[float, float]) -> Shape:
        """The same bar stretched so its second end sits at `end` (the first stays put)."""
        first, _ = self.ends()
        dx, dy = end[0] - first[0], end[1] - first[1]
        return replace(self, center=(first[0] + dx / 2, first[1] + dy / 2),
                       half=(math.hypot(dx, dy) / 2, self.half[1]), angle=math.atan2(dy, dx))

    def describe(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.kind}"


@dataclass(frozen=True)
class Background:
    kind: Literal["flat", "gradient", "texture"]
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    seed: int

    def render(self, height: int, width: int) -> np.ndarray:
        a, b = (np.array(c, dtype=np.float32) for c in self.colours)
        if self.kind == "flat":
            return np.broadcast_to(a, (height, width, 3)).copy()
        ys, xs = np.mgrid[:height, :width].astype(np.float32)
        t = ((xs / width + ys / height) / 2)[..., None]
        image = a * (1 - t) + b * t
        if self.kind == "texture":  # low-contrast noise, smooth over ~8 px
            rng = np.random.default_rng(self.seed)
            coarse = rng.normal(0, 8, (height // 8 + 1, width // 8 + 1)).astype(np.float32)
            smooth = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)
            image += np.asarray(smooth)[..., None]
        return image


@dataclass(frozen=True)
class Scene:
    height: int
    width: int
    background: Background
    shapes: tuple[Shape, ...]

    def prompt(self) -> str:
        return " and ".join(s.describe() for s in self.shapes)

    def _subpixels(self) -> tuple[np.ndarray, np.ndarray]:
        offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
        ys = (np.arange(self.height)[:, None] + offsets[None, :]).reshape(-1)
        xs = (np.arange(self.width)[:, None] + offsets[None, :]).reshape(-1)
        return np.meshgrid(xs, ys)

    def coverage(self, shape: Shape) -> np.ndarray:
        """The fraction of each pixel the shape covers, (H, W) in [0, 1]."""
        x, y = self._subpixels()
        hit = shape.inside(x, y).astype(np.float32)
        return hit.reshape(self.height, SUPERSAMPLE, self.width, SUPERSAMPLE).mean(axis=(1, 3))

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8; later shapes are drawn over earlier ones."""
        image = self.background.render(self.height, self.width)
        for shape in self.shapes:
            alpha = self.coverage(shape)[..., None]
            image = image * (1 - alpha) + np.array(COLOURS[shape.colour], np.float32) * alpha
        return image.clip(0, 255).round().astype(np.uint8)

    def visible_mask(self, index: int) -> np.ndarray:
        """Pixels where shape `index` is the top-most shape (≥ half covered)."""
        mine = self.coverage(self.shapes[index]) >= 0.5
        for above in self.shapes[index + 1:]:
            mine &= self.coverage(above) < 0.5
        return mine

    def with_shape(self, index: int, shape: Shape) -> Scene:
        shapes = list(self.shapes)
        shapes[index] = shape
        return replace(self, shapes=tuple(shapes))


def random_shape(rng: np.random.Generator, height: int, width: int, kind: Kind | None = None,
                 colour: str | None = None) -> Shape:
    kind = kind or KINDS[rng.integers(len(KINDS))]
    side = min(height, width)
    size = rng.uniform(0.09, 0.2) * side
    half = {"disc": (size, size), "square": (size, size), "triangle": (size, size),
            "rect": (size * 1.5, size * 0.8), "ellipse": (size * 1.5, size * 0.8),
            "bar": (size * 2.0, max(2.0, size * 0.35))}[kind]
    margin = max(half) + 2
    center = (rng.uniform(margin, width - 1 - margin), rng.uniform(margin, height - 1 - margin))
    angle = 0.0 if kind == "disc" else float(rng.uniform(-math.pi, math.pi))
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    return Shape(kind, center, half, angle, colour)


def random_background(rng: np.random.Generator) -> Background:
    kind = ("flat", "gradient", "texture")[rng.integers(3)]
    colours = tuple(tuple(int(v) for v in rng.integers(60, 200, 3)) for _ in range(2))
    return Background(kind, colours, int(rng.integers(2**31)))


def random_scene(rng: np.random.Generator, height: int = 64, width: int = 64,
                 n_shapes: int | None = None) -> Scene:
    n = n_shapes or int(rng.integers(1, 4))
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    shapes = tuple(random_shape(rng, height, width, colour=str(c)) for c in colours)
    return Scene(height, width, random_background(rng), shapes)
