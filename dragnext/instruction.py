"""The instruction model of SPEC §2: an edit item with its region drags, and its validation.

An item's masks are boolean arrays of the image's size; points are (x, y) in input-image
pixels (x right, y down), with pixel centres at integer coordinates. An instruction gives
each mask as a file reference or inline, as COCO polygons or RLE (`dragnext.inline_mask`).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError

from dragnext.geometry import SCALE_RANGE, scale_factors
from dragnext.inline_mask import InlineMask, InvalidMask, check, decode
from dragnext.photo import Photo, PhotoError, photo_of, register_heif, upright_size

DragType = Literal["translate", "deform", "rotate", "scale"]
DRAG_TYPES = ("translate", "deform", "rotate", "scale")
ScaleAxis = Literal["uniform", "free"]
# What a centre defines, for the drags that have one: rotate and scale need it; for deform it
# is an optional anchor that stays put (the region stretches or bends towards it).
CENTRED = {"rotate": "the rotation angle", "scale": "the scale factor", "deform": "the stretch axis"}
CENTRE_REQUIRED = ("rotate", "scale")
# A uniform scale's target further off the ray from the centre through the handle than this
# is probably a mistake: only its distance from the centre is used.
OFF_RAY_DEGREES = 10.0
Point = tuple[float, float]
# Checked from the file header, before any pixel is decoded: a 20000x20000 PNG is a few
# hundred kB on disk and 1.2 GB in memory.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_SIDE = 8192
# Below this a side has less than one latent pixel per UNet level; past this aspect the
# shorter side would be stretched to the model's size multiple and the edit distorted.
MIN_IMAGE_SIDE = 16
MAX_ASPECT_RATIO = 8.0
# What one item may ask for: its masks are image-sized, so drags cost memory in proportion.
MAX_DRAGS = 16
MAX_MASK_PIXELS = 8 * MAX_IMAGE_PIXELS
# The run-length strings of one item's inline masks together: each may hold up to
# `inline_mask.MAX_RLE_CHARS`, but an item of 17 masks that large is an attack on the parser.
MAX_ITEM_RLE_CHARS = 8_000_000


class InvalidItemError(ValueError):
    """Input that cannot be edited. Names the item (or file) and the field."""

    def __init__(self, item: str, field: str, reason: str):
        self.item, self.field, self.reason = item, field, reason
        super().__init__(f"item '{item}': {field}: {reason}")


@dataclass(frozen=True)
class Drag:
    type: DragType
    handle_mask: np.ndarray
    handle: Point
    target: Point
    center: Point | None = None
    axis: ScaleAxis | None = None  # scale only; None means uniform

    @property
    def is_noop(self) -> bool:
        return self.handle == self.target

    @property
    def factors(self) -> tuple[float, float] | None:
        """(s_x, s_y) of a scale drag (`dragnext.geometry`), else None."""
        if self.type != "scale":
            return None
        return scale_factors(self.handle, self.target, self.center, self.axis or "uniform")


@dataclass(frozen=True)
class Instruction:
    drags: tuple[Drag, ...]
    prompt: str = ""
    editable_mask: np.ndarray | None = None
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class EditItem:
    image: Image.Image  # upright 8-bit sRGB RGB: what the model edits
    instruction: Instruction
    item_id: str = "item"
    photo: Photo | None = field(default=None, repr=False, compare=False)  # the file's own pixels

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the input image."""
        return self.image.size

    @property
    def editable(self) -> np.ndarray:
        """M, with an absent mask meaning the whole image."""
        mask = self.instruction.editable_mask
        return np.ones((self.image.height, self.image.width), dtype=bool) if mask is None else mask != 0

    def to_record(self) -> dict:
        instruction = self.instruction
        return {
            "item_id": self.item_id,
            "prompt": instruction.prompt,
            "image_size": list(self.size),
            "has_editable_mask": instruction.editable_mask is not None,
            "drags": [
                {"type": d.type, "handle": list(d.handle), "target": list(d.target),
                 "center": None if d.center is None else list(d.center),
                 **({"axis": d.axis or "uniform", "factors": list(d.factors)} if d.type == "scale" else {}),
                 "handle_pixels": int(d.handle_mask.sum())}
                for d in instruction.drags
            ],
            "warnings": list(instruction.warnings),
        }


# The instruction file (SPEC §2), parsed with pydantic so that a bad field is named. A mask is
# a file reference (relative to the instruction, or to the manifest) or an inline mask; the
# discriminator reports an inline mask's own errors, not "should be a valid string" as well.
_MASK_FORMS = ("file", "inline")
MaskRef = Annotated[Annotated[str, Tag("file")] | Annotated[InlineMask, Tag("inline")],
                    Discriminator(lambda v: "inline" if isinstance(v, dict | InlineMask) else "file")]


class DragSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: DragType
    handle_mask: MaskRef
    handle: tuple[float, float]
    target: tuple[float, float]
    center: tuple[float, float] | None = None
    axis: ScaleAxis | None = None


class InstructionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = ""
    editable_mask: MaskRef | None = None
    drags: list[DragSpec]

    def masks(self) -> dict[str, MaskRef]:
        """Every mask by field name: `editable_mask` and `drags[i].handle_mask`."""
        named = {} if self.editable_mask is None else {"editable_mask": self.editable_mask}
        return named | {f"drags[{i}].handle_mask": d.handle_mask for i, d in enumerate(self.drags)}


def _field_name(loc: tuple) -> str:
    name = ""
    for part in loc:
        if part in _MASK_FORMS:  # the union's tags: not fields
            continue
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "<root>"


def _bomb_pixels(error: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found.group(1)):,} pixels" if found else "too many pixels"


def open_image_header(source: str | Path | BinaryIO, item: str, field: str) -> Image.Image:
    """The image opened lazily (header only), refused before decoding if it is too large.
    Its upright size (what coordinates are checked against) is `photo.upright_size`."""
    register_heif()
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the size is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except FileNotFoundError:
        raise InvalidItemError(item, field, f"file '{source}' does not exist") from None
    except Image.DecompressionBombError as error:
        raise InvalidItemError(item, field, f"image has {_bomb_pixels(error)}; at most "
                               f"{MAX_IMAGE_PIXELS:,} are accepted") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidItemError(item, field, f"not a readable image ({error})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE:
        raise InvalidItemError(item, field, f"image is {width}x{height} = {width * height:,} pixels; "
                               f"at most {MAX_IMAGE_PIXELS:,} pixels and {MAX_IMAGE_SIDE} px a side "
                               "are accepted")
    return image


def check_image_shape(size: tuple[int, int], item: str, field: str) -> None:
    """An input image (not a mask) the model can work on: each side at least
    `MIN_IMAGE_SIDE`, the aspect ratio at most `MAX_ASPECT_RATIO`."""
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidItemError(item, field, f"image is {width}x{height}; each side must be at least "
                               f"{MIN_IMAGE_SIDE} px")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidItemError(item, field, f"image is {width}x{height}, an aspect ratio of "
                               f"{max(width, height) / min(width, height):.1f}:1; at most "
                               f"{MAX_ASPECT_RATIO:g}:1 is accepted")


def _open_image(source: str | Path | BinaryIO, item: str, field: str) -> Image.Image:
    image = open_image_header(source, item, field)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidItemError(item, field, f"not a readable image ({error})") from None
    return image


def read_photo(source: str | Path | BinaryIO, item: str, field: str = "image") -> Photo:
    """An input picture, upright, with what its file holds (`dragnext.photo`)."""
    image = _open_image(source, item, field)
    check_image_shape(upright_size(image), item, field)
    try:
        return photo_of(image)
    except PhotoError as error:
        raise InvalidItemError(item, field, str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidItemError(item, field, f"not a readable image ({error})") from None


def read_image(source: str | Path | BinaryIO, item: str, field: str = "image") -> Image.Image:
    """The picture the model edits: upright (EXIF orientation applied), 8-bit sRGB RGB."""
    return read_photo(source, item, field).image


def read_mask(source: str | Path | BinaryIO, item: str, field: str) -> np.ndarray:
    """A mask PNG: any non-zero pixel (in any channel) is 1."""
    array = np.asarray(_open_image(source, item, field))
    return array.any(axis=-1) if array.ndim == 3 else array != 0


def parse_instruction(raw: object, item: str) -> InstructionSpec:
    """Check the structure of an instruction (the JSON file's, or a manifest row's)."""
    try:
        return InstructionSpec.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidItemError(item, _field_name(first["loc"]), first["msg"]) from None


def build_instruction(spec: InstructionSpec, item: str, read: Callable[[str, str], np.ndarray],
                      size: tuple[int, int]) -> Instruction:
    """The masks of a checked spec for an image of (width, height): `read(reference, field)`
    reads a file's, inline ones are decoded."""
    def mask(ref: MaskRef, field: str) -> np.ndarray:
        return read(ref, field) if isinstance(ref, str) else decode_inline(ref, size, item, field)

    _check_rle_budget(spec, item)

    drags = tuple(
        Drag(type=d.type, handle=d.handle, target=d.target, center=d.center, axis=d.axis,
             handle_mask=mask(d.handle_mask, f"drags[{i}].handle_mask"))
        for i, d in enumerate(spec.drags)
    )
    editable = None if spec.editable_mask is None else mask(spec.editable_mask, "editable_mask")
    return Instruction(drags=drags, prompt=spec.prompt, editable_mask=editable)


def _check_rle_budget(spec: InstructionSpec, item: str) -> None:
    chars = sum(len(ref.rle.counts) for ref in spec.masks().values()
                if isinstance(ref, InlineMask) and ref.rle is not None)
    if chars > MAX_ITEM_RLE_CHARS:
        raise InvalidItemError(item, "drags", f"inline RLE masks of {chars:,} characters in all; at most "
                               f"{MAX_ITEM_RLE_CHARS:,} per item (give large masks as files)")


def decode_inline(mask: InlineMask, size: tuple[int, int], item: str, field: str) -> np.ndarray:
    try:
        return decode(mask, size)
    except InvalidMask as error:
        raise InvalidItemError(item, f"{field}.{error.part}", error.reason) from None


def read_instruction(path: str | Path, item_id: str | None = None,
                     size: tuple[int, int] | None = None) -> Instruction:
    """Load an instruction JSON (mask paths relative to it) for an image of (width, height);
    without `size`, inline masks are refused. Checks the file's structure; the rules that
    need the image are checked by `validate_item`."""
    path = Path(path)
    item = item_id or path.stem
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidItemError(item, "instruction", f"file '{path}' does not exist") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidItemError(
            item, "instruction", f"'{path}' is not valid JSON (line {error.lineno}, "
            f"column {error.colno}: {error.msg})") from None
    spec = parse_instruction(raw, item)
    if size is None:
        inline = [field for field, ref in spec.masks().items() if not isinstance(ref, str)]
        if inline:
            raise InvalidItemError(item, inline[0], "an inline mask needs the image's size")
    return build_instruction(spec, item, lambda ref, field: read_mask(path.parent / ref, item, field), size)


def _check_point(item: str, field: str, point: Point, width: int, height: int) -> None:
    x, y = point
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InvalidItemError(item, field, f"{list(point)} is not a finite point")
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):  # always true for an unknown size
        raise InvalidItemError(
            item, field, f"{list(point)} lies outside the {width}x{height} image "
            f"(x in [0, {width - 1}], y in [0, {height - 1}])")


def _check_mask(item: str, field: str, mask: np.ndarray, width: int, height: int) -> None:
    if mask.shape != (height, width):
        raise InvalidItemError(
            item, field, f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}")
    if not mask.any():
        raise InvalidItemError(item, field, "mask is empty")


def _target_beyond_centre(drag: Drag | DragSpec) -> bool:
    """The target lies on the handle's side of the centre: (g − c)·(h − c) > 0."""
    (hx, hy), (gx, gy), (cx, cy) = drag.handle, drag.target, drag.center
    return (hx - cx) * (gx - cx) + (hy - cy) * (gy - cy) > 0


def _check_scale(item: str, name: str, drag: Drag | DragSpec) -> None:
    """A scale's factors: defined, positive, in `SCALE_RANGE`, and not all 1."""
    axis = drag.axis or "uniform"
    if axis == "free":
        for k, a in enumerate("xy"):
            if drag.handle[k] == drag.center[k]:
                raise InvalidItemError(item, f"{name}.handle", f"has the centre's {a} = {drag.handle[k]:g}, "
                                       f"so s_{a} is undefined for a free scale (use axis uniform)")
    factors = scale_factors(drag.handle, drag.target, drag.center, axis)
    if axis == "uniform" and not _target_beyond_centre(drag):
        raise InvalidItemError(item, f"{name}.target", "the target is not on the handle's side of the "
                               "centre (a scale does not mirror)")
    low, high = SCALE_RANGE
    for a, s in zip("xy" if axis == "free" else "s", factors, strict=False):
        label = f"s_{a}" if axis == "free" else "s"
        if s <= 0:
            raise InvalidItemError(item, f"{name}.target", f"{label} = {s:.3g}: the target is not on the "
                                   "handle's side of the centre (a scale does not mirror)")
        if not low <= s <= high:
            raise InvalidItemError(item, f"{name}.target", f"scale factor {label} = {s:.3g} is outside "
                                   f"[{low:g}, {high:g}]")
    if all(abs(s - 1) < 1e-3 for s in factors):
        raise InvalidItemError(item, f"{name}.target", "scale factor is 1 (the target is as far from the "
                               "centre as the handle), so nothing would change")


def check_drag_geometry(item: str, i: int, drag: Drag | DragSpec,
                        size: tuple[int, int] | None = None) -> None:
    """The rules of one drag that need no file: its type, finite points (inside the image
    when its (width, height) is known), the centre rules of rotate and scale, and a scale's
    factors."""
    name = f"drags[{i}]"
    if drag.type not in DRAG_TYPES:
        raise InvalidItemError(item, f"{name}.type", f"'{drag.type}' is not one of {', '.join(DRAG_TYPES)}")
    for point_name in ("handle", "target", "center"):
        point = getattr(drag, point_name)
        if point is not None:
            _check_point(item, f"{name}.{point_name}", point, *(size or (math.inf, math.inf)))
    if drag.axis is not None and drag.type != "scale":
        raise InvalidItemError(item, f"{name}.axis", f"only allowed for scale drags, not {drag.type}")
    if drag.type not in CENTRED:
        if drag.center is not None:
            raise InvalidItemError(item, f"{name}.center",
                                   f"only allowed for rotate, scale and deform drags, not {drag.type}")
        return
    if drag.center is None:
        if drag.type in CENTRE_REQUIRED:
            raise InvalidItemError(item, f"{name}.center", f"required for a {drag.type} drag")
        return
    for point_name in ("handle", "target") if drag.type == "rotate" else ("handle",):
        if tuple(getattr(drag, point_name)) == tuple(drag.center):
            raise InvalidItemError(item, f"{name}.center",
                                   f"equals the {point_name}, so {CENTRED[drag.type]} is undefined")
    if drag.type == "scale":
        _check_scale(item, name, drag)
    if drag.type == "deform":
        if not _target_beyond_centre(drag):
            raise InvalidItemError(item, f"{name}.target", "an anchored deform needs the target on the "
                                   "handle's side of the anchor (center), or the region would fold")


def check_spec(spec: InstructionSpec, item: str, size: tuple[int, int] | None = None) -> None:
    """Every rule of an instruction that needs no mask file (inline masks: all but decoding)."""
    if not spec.drags:
        raise InvalidItemError(item, "drags", "at least one drag is required")
    if len(spec.drags) > MAX_DRAGS:
        raise InvalidItemError(item, "drags", f"{len(spec.drags)} drags; at most {MAX_DRAGS} per item")
    if size is not None:
        masks = len(spec.drags) + (spec.editable_mask is not None)
        if masks * size[0] * size[1] > MAX_MASK_PIXELS:
            raise InvalidItemError(item, "drags", f"{masks} masks of {size[0]}x{size[1]} are "
                                   f"{masks * size[0] * size[1]:,} mask pixels; at most {MAX_MASK_PIXELS:,}")
    _check_rle_budget(spec, item)
    for name, ref in spec.masks().items():
        if not isinstance(ref, str):
            try:
                check(ref, size)
            except InvalidMask as error:
                raise InvalidItemError(item, f"{name}.{error.part}", error.reason) from None
    for i, drag in enumerate(spec.drags):
        check_drag_geometry(item, i, drag, size)


def _scale_warnings(name: str, drag: Drag, mask: np.ndarray, width: int, height: int) -> list[str]:
    """A uniform scale's target off the ray through the handle; a region scaled past the
    image's border."""
    found = []
    c, h, g = (np.array(p, dtype=float) for p in (drag.center, drag.handle, drag.target))
    if (drag.axis or "uniform") == "uniform":
        u, v = h - c, g - c
        angle = math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), u @ v))
        if angle > OFF_RAY_DEGREES:
            found.append(f"{name}.target: {angle:.0f}° off the ray from the centre through the handle; "
                         f"a uniform scale uses only its distance (s = {drag.factors[0]:.3g})")
    ys, xs = np.nonzero(mask)
    moved = c + (np.stack([xs, ys], axis=-1) - c) * np.array(drag.factors)
    outside = ((moved < -0.5) | (moved > np.array([width, height]) - 0.5)).any(axis=-1)
    if outside.any():
        found.append(f"{name}: {int(outside.sum())} of {len(moved)} handle pixels scale to outside "
                     "the image and are clipped")
    return found


def _validate_drag(item: EditItem, i: int, drag: Drag, warnings: list[str]) -> Drag:
    width, height = item.size
    name = f"drags[{i}]"
    check_drag_geometry(item.item_id, i, drag, item.size)
    _check_mask(item.item_id, f"{name}.handle_mask", drag.handle_mask, width, height)
    handle_mask = drag.handle_mask != 0
    inside = handle_mask & item.editable
    if not inside.any():
        raise InvalidItemError(item.item_id, f"{name}.handle_mask",
                               "lies entirely outside the editable mask")
    if inside.sum() < handle_mask.sum():
        warnings.append(f"{name}.handle_mask: {int(handle_mask.sum() - inside.sum())} pixels "
                        "outside the editable mask were dropped")
    if drag.type == "scale":
        warnings.extend(_scale_warnings(name, drag, inside, width, height))
    if drag.is_noop:
        warnings.append(f"{name}: handle equals target, so this drag is a no-op "
                        "(its region is held in place)")
    return replace(drag, handle_mask=inside)


def validate_item(item: EditItem) -> EditItem:
    """Check every rule of SPEC §2; return the item with masks intersected and warnings set."""
    width, height = item.size
    instruction = item.instruction
    if not instruction.drags:
        raise InvalidItemError(item.item_id, "drags", "at least one drag is required")
    if instruction.editable_mask is not None:
        _check_mask(item.item_id, "editable_mask", instruction.editable_mask, width, height)
    warnings: list[str] = list(instruction.warnings)
    drags = tuple(_validate_drag(item, i, d, warnings) for i, d in enumerate(instruction.drags))
    editable = None if instruction.editable_mask is None else instruction.editable_mask != 0
    checked = replace(instruction, drags=drags, editable_mask=editable, warnings=tuple(warnings))
    return replace(item, instruction=checked)


def findings(item: EditItem, numbers: list[int] | None = None) -> tuple[list[InvalidItemError], list[str]]:
    """Every error of an item (not only the first, as `validate_item` raises) and its
    warnings, in `validate_item`'s words: for a person drawing drags, who fixes them one by
    one next to the drag each names. `numbers` name the drags (`drags[n]`) where they are
    not their positions, e.g. on a page that also holds drags still being drawn."""
    width, height = item.size
    errors: list[InvalidItemError] = []
    warnings: list[str] = []
    if not item.instruction.drags:
        errors.append(InvalidItemError(item.item_id, "drags", "at least one drag is required"))
    if item.instruction.editable_mask is not None:
        try:
            _check_mask(item.item_id, "editable_mask", item.instruction.editable_mask, width, height)
        except InvalidItemError as error:
            return [error], warnings  # every drag is judged against M
    for i, drag in enumerate(item.instruction.drags):
        try:
            _validate_drag(item, numbers[i] if numbers else i, drag, warnings)
        except InvalidItemError as error:
            errors.append(error)
    return errors, warnings
