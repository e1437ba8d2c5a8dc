"""Masks given inline rather than as PNG files: COCO's two segmentation formats.

    {"polygons": [[x1, y1, x2, y2, ...], ...]}        one or more polygons, in image pixels
    {"rle": {"size": [height, width], "counts": "…"}}  compressed run-length encoding

Both are what COCO annotations, SAM's outputs and most labelling tools write, and what
pycocotools reads and writes. A polygon is rasterised as pycocotools does (`frPyObjects`),
so a mask exported from a COCO tool is the mask edited here, pixel for pixel; the union of
several polygons is the region.

The run-length string is parsed here, not by pycocotools' C decoder: that decoder trusts the
runs to add up to height × width and writes past its buffer when a string says otherwise,
and a manifest's strings are untrusted. The parse is vectorised (numpy) and every number is
bounded before the runs are summed, so no string can wrap the sum around to height × width.
A polygon's cost to rasterise is bounded before pycocotools sees it: its memory and time
grow with the length of the outline (it walks every edge at 5× resolution), not with the
vertex count alone, so a zig-zag of long edges is refused by its perimeter.

The format (pycocotools' `rleToString`): each run is a signed delta from the run two before
(from the fourth run on), written 5 bits per character, least significant first, offset by
48; bit 5 set means more characters follow, bit 4 of the last is the sign. Runs alternate
0s and 1s, starting with 0s, in column-major (Fortran) order.
"""

from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as coco_mask
from pydantic import BaseModel, ConfigDict, model_validator

# What one inline mask may hold: a hand-drawn outline has hundreds of vertices, a traced one
# thousands; a million is no mask, it is an attempt to stall the validator.
MAX_POLYGON_VERTICES = 100_000
# pycocotools merges the polygons' encodings one by one, at a cost that grows with their
# number times the runs so far: 33 000 thin triangles took 23 s.
MAX_POLYGONS = 1_000
MAX_RLE_CHARS = 4_000_000
# The outline pycocotools walks, in image pixels (Σ max(|Δx|, |Δy|) over every edge): about
# 60 bytes each at its 5× resolution, so this bounds one mask's rasterisation near 60 MB.
# A traced outline of a 4096² photo is a few tens of thousands of pixels long.
MAX_POLYGON_PERIMETER = 1_000_000
# A run's number, as characters: 7 hold 34 bits and a sign, past any run of a 4096² mask,
# and keep the running sums of 4 M numbers well inside int64.
MAX_NUMBER_CHARS = 7


class InvalidMask(ValueError):
    """An inline mask that cannot be decoded: which part (`polygons[1]`, `rle.counts`) and why."""

    def __init__(self, part: str, reason: str):
        super().__init__(f"{part}: {reason}")
        self.part, self.reason = part, reason


class Rle(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: tuple[int, int]  # (height, width), COCO's order
    counts: str


class InlineMask(BaseModel):
    """Exactly one of `polygons` and `rle`."""
    model_config = ConfigDict(extra="forbid")
    polygons: list[list[float]] | None = None
    rle: Rle | None = None

    @model_validator(mode="after")
    def _one_form(self) -> InlineMask:
        if (self.polygons is None) == (self.rle is None):
            raise ValueError("give exactly one of polygons and rle")
        return self


def check(mask: InlineMask, size: tuple[int, int] | None = None) -> None:
    """Every rule that needs no decoding: the polygons' shape, count and finiteness, the
    runs' length; with the image's (width, height), that the polygons lie on it and the
    run-length mask is its size. Raises `InvalidMask`."""
    if mask.polygons is not None:
        if not mask.polygons:
            raise InvalidMask("polygons", "at least one polygon is required")
        if len(mask.polygons) > MAX_POLYGONS:
            raise InvalidMask("polygons", f"{len(mask.polygons):,} polygons; at most {MAX_POLYGONS:,}")
        vertices = sum(len(polygon) // 2 for polygon in mask.polygons)
        if vertices > MAX_POLYGON_VERTICES:
            raise InvalidMask("polygons", f"{vertices:,} vertices; at most {MAX_POLYGON_VERTICES:,}")
        for i, polygon in enumerate(mask.polygons):
            if len(polygon) < 6 or len(polygon) % 2:
                raise InvalidMask(f"polygons[{i}]", f"{len(polygon)} numbers; a polygon is x, y pairs, "
                                  "at least 3 of them")
            if not all(math.isfinite(v) for v in polygon):
                raise InvalidMask(f"polygons[{i}]", "coordinates must be finite numbers")
            if size is not None:
                _check_on_image(i, polygon, size)
        outline = sum(perimeter(polygon) for polygon in mask.polygons)
        if outline > MAX_POLYGON_PERIMETER:
            raise InvalidMask("polygons", f"outlines {outline:,.0f} pixels long; at most "
                              f"{MAX_POLYGON_PERIMETER:,} (a mask this jagged should be given as RLE)")
        return
    _runs(mask.rle, size)


def _runs(rle: Rle, size: tuple[int, int] | None) -> np.ndarray:
    """The runs of a checked RLE: its size positive (and the image's, given one), its string
    bounded and parsed, its runs covering the mask exactly."""
    height, width = rle.size
    if height < 1 or width < 1:
        raise InvalidMask("rle.size", f"{[height, width]} is not a [height, width] of positive sides")
    if len(rle.counts) > MAX_RLE_CHARS:
        raise InvalidMask("rle.counts", f"{len(rle.counts):,} characters; at most {MAX_RLE_CHARS:,}")
    if size is not None and (width, height) != tuple(size):
        raise InvalidMask("rle.size", f"the mask is {width}x{height}, the image is {size[0]}x{size[1]}")
    runs = runs_of(rle.counts)
    pixels = height * width  # a Python int: no side can overflow it
    if len(runs) and int(runs.max()) > pixels:
        raise InvalidMask("rle.counts", f"run {int(runs.argmax())} is {int(runs.max()):,} pixels long, the "
                          f"mask has {pixels:,} ({width}x{height})")
    covered = int(runs.sum())  # each run at most `pixels`, at most 4 M runs: no wrap
    if covered != pixels:
        raise InvalidMask("rle.counts", f"the runs cover {covered:,} pixels, the mask has "
                          f"{pixels:,} ({width}x{height})")
    return runs


def perimeter(polygon: list[float]) -> float:
    """The closed outline's length as pycocotools walks it: Σ max(|Δx|, |Δy|) per edge."""
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    steps = np.abs(np.roll(xy, -1, axis=0) - xy)
    return float(steps.max(axis=1).sum())


def _check_on_image(i: int, polygon: list[float], size: tuple[int, int]) -> None:
    width, height = size
    xs, ys = polygon[0::2], polygon[1::2]
    if min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height:
        raise InvalidMask(f"polygons[{i}]", f"a vertex lies outside the {width}x{height} image "
                          f"(x in [0, {width}], y in [0, {height}])")


def decode(mask: InlineMask, size: tuple[int, int]) -> np.ndarray:
    """The boolean (height, width) mask on an image of (width, height). Raises `InvalidMask`."""
    width, height = size
    if mask.rle is not None:
        runs = _runs(mask.rle, size)  # checked and parsed once
    else:
        check(mask, size)
        runs = runs_of(_rasterised(mask.polygons, height, width))
    values = np.arange(len(runs)) % 2 == 1
    return np.repeat(values, runs).reshape((height, width), order="F")


def _rasterised(polygons: list[list[float]], height: int, width: int) -> str:
    """The union of the polygons as pycocotools rasterises them, as a run-length string."""
    rles = coco_mask.frPyObjects([list(p) for p in polygons], height, width)
    return coco_mask.merge(rles)["counts"].decode("ascii")


def runs_of(counts: str) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string (the module docstring gives the format)."""
    c = _digits(counts)
    if not len(c):
        return np.zeros(0, dtype=np.int64)
    more = (c & 0x20) != 0
    if len(c) and more[-1]:
        raise InvalidMask("rle.counts", "the string ends inside a number")
    ends = np.flatnonzero(~more)  # each number's last character
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    chars = ends - starts + 1
    if len(chars) and chars.max() > MAX_NUMBER_CHARS:
        raise InvalidMask("rle.counts", f"run {int(chars.argmax())} is a number of {int(chars.max())} "
                          f"characters; at most {MAX_NUMBER_CHARS}")
    place = np.arange(len(c)) - np.repeat(starts, chars)  # 5-bit digit position in its number
    value = np.add.reduceat((c & 0x1F) << (5 * place), starts) if len(c) else np.zeros(0, np.int64)
    negative = (c[ends] & 0x10) != 0
    value[negative] -= np.left_shift(1, 5 * chars[negative])  # the sign bit extended
    # From the fourth run on, each is a delta from the run two before: a running sum over
    # the odd runs and over the even runs from the third.
    runs = value.copy()
    runs[1::2] = np.cumsum(value[1::2])
    runs[2::2] = np.cumsum(value[2::2])
    if len(runs) and runs.min() < 0:
        raise InvalidMask("rle.counts", f"run {int(np.argmax(runs < 0))} has a negative length")
    return runs


def _digits(counts: str) -> np.ndarray:
    """Each character's 6-bit value, refused unless every one is in COCO's alphabet."""
    data = counts.encode("utf-8", "surrogatepass")
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    bad = (c < 0) | (c >= 64)
    if bad.any():
        at = int(bad.argmax())
        position = len(data[:at].decode("utf-8", "surrogatepass"))  # in characters, not bytes
        raise InvalidMask("rle.counts", f"character {position} ({counts[position]!r}) is not "
                          "in COCO's alphabet")
    return c


def encode(mask: np.ndarray) -> InlineMask:
    """A boolean (height, width) mask as compressed RLE (pycocotools' encoder)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return InlineMask(rle=Rle(size=tuple(rle["size"]), counts=rle["counts"].decode("ascii")))
