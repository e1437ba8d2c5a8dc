"""What a person has drawn on the Author page, and the instruction it makes.

A region is the union of what was marked on it: polygons, brush strokes and a mask a
segmenter found from a box (COCO RLE). Points are (x, y) in image pixels, as in SPEC §2.
A drag still being drawn (no region, no target yet) is reported, not refused: the page
shows its errors next to it, in `manifest validate`'s words.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dragnext.inline_mask import InlineMask, InvalidMask, Rle, decode
from dragnext.instruction import (
    MAX_DRAGS,
    Drag,
    DragSpec,
    DragType,
    EditItem,
    Instruction,
    InvalidItemError,
    ScaleAxis,
    findings,
    parse_instruction,
    validate_item,
)
from manifests.items import ITEM_ID, ITEM_ID_RULE

Point = tuple[float, float]
# A region's polygon vertices and brush points in all: more is not drawn by hand (the page
# keeps a stroke's points a fraction of the brush apart).
MAX_VERTICES = 20_000
MAX_BRUSH_RADIUS = 256
# What one region's strokes may paint, in px (points x diameter^2): about a second of
# drawing, so no request can cost minutes of CPU.
MAX_PAINTED_PX = 400_000_000


class Stroke(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: list[Point] = Field(min_length=1, max_length=MAX_VERTICES)
    radius: float = Field(gt=0, le=MAX_BRUSH_RADIUS)


class Region(BaseModel):
    model_config = ConfigDict(extra="forbid")
    polygons: list[list[Point]] = Field(default_factory=list, max_length=256)
    strokes: list[Stroke] = Field(default_factory=list, max_length=4096)
    rle: Rle | None = None  # from a segmenter, or a manifest row's mask

    @model_validator(mode="after")
    def _bounded(self) -> Region:
        vertices = sum(map(len, self.polygons)) + sum(len(s.points) for s in self.strokes)
        if vertices > MAX_VERTICES:
            raise ValueError(f"{vertices:,} polygon vertices and brush points; at most {MAX_VERTICES:,}")
        painted = sum(len(s.points) * (2 * s.radius + 1) ** 2 for s in self.strokes)
        if painted > MAX_PAINTED_PX:
            raise ValueError("the brush strokes are too many or too wide to paint; fewer or a smaller brush")
        return self

    @property
    def empty(self) -> bool:
        return not (self.polygons or self.strokes or self.rle)

    def mask(self, size: tuple[int, int]) -> np.ndarray:
        """The (height, width) boolean union on an image of (width, height). Raises
        `InvalidMask` naming the part (`polygons[i]`, `rle.counts`)."""
        width, height = size
        mask = np.zeros((height, width), dtype=bool)
        closed = [p for p in self.polygons if len(p) >= 3]
        if closed:
            mask |= decode(InlineMask(polygons=[[c for xy in p for c in xy] for p in closed]), size)
        if self.strokes:
            canvas = Image.new("1", size)
            draw = ImageDraw.Draw(canvas)
            for stroke in self.strokes:
                r = stroke.radius
                if len(stroke.points) > 1:
                    draw.line(stroke.points, fill=1, width=max(1, round(2 * r)), joint="curve")
                for x, y in stroke.points:
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
            mask |= np.asarray(canvas, dtype=bool)
        if self.rle is not None:
            mask |= decode(InlineMask(rle=self.rle), size)
        return mask


class DragState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: DragType = "translate"
    region: Region = Field(default_factory=Region)
    handle: Point | None = None
    target: Point | None = None
    center: Point | None = None
    axis: ScaleAxis | None = None


class AuthorState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")  # the uploaded image's SHA-256
    item_id: str = Field(default="item", min_length=1, max_length=200)
    prompt: str = Field(default="", max_length=2000)
    editable: Region = Field(default_factory=Region)
    drags: list[DragState] = Field(default_factory=list, max_length=MAX_DRAGS)


class Finding(BaseModel):
    drag: int | None  # the drag it concerns; None for the item as a whole
    field: str
    message: str
    level: str  # error | warning


def _drag_index(field: str) -> int | None:
    found = re.match(r"drags\[(\d+)\]", field)
    return int(found.group(1)) if found else None


def _error(field: str, message: str) -> Finding:
    return Finding(drag=_drag_index(field), field=field, message=message, level="error")


def _region_mask(item_id: str, field: str, region: Region, size: tuple[int, int]) -> np.ndarray:
    try:
        return region.mask(size)
    except InvalidMask as error:
        raise InvalidItemError(item_id, f"{field}.{error.part}", error.reason) from None


def instruction_of(state: AuthorState, image: Image.Image) -> tuple[EditItem, list[Finding], EditItem]:
    """The item made of the complete drags; what is wrong or worth a warning with every drag
    (complete or not); and the item to preview (`drawable`). The first is ready to edit when
    no finding is an error."""
    problems: list[Finding] = []
    if not ITEM_ID.fullmatch(state.item_id):  # ids name output paths: refused before anything is written
        problems.append(_error("item_id", ITEM_ID_RULE))
    drags, kept = [], []
    for i, d in enumerate(state.drags):
        given = {"handle": d.handle, "target": d.target, "center": d.center, "axis": d.axis}
        raw = {"type": d.type, "handle_mask": "region", **{k: v for k, v in given.items() if v is not None}}
        try:
            spec = parse_instruction({"drags": [raw]}, state.item_id).drags[0]
            mask = _region_mask(state.item_id, f"drags[{i}].handle_mask", d.region, image.size)
        except InvalidItemError as error:
            problems.append(_error(error.field.replace("drags[0]", f"drags[{i}]", 1), error.reason))
            continue
        drags.append(_drag(spec, mask))
        kept.append(i)
    editable = None
    if not state.editable.empty:
        try:
            editable = _region_mask(state.item_id, "editable_mask", state.editable, image.size)
        except InvalidItemError as error:
            problems.append(_error(error.field, error.reason))
    item = EditItem(image, Instruction(drags=tuple(drags), prompt=state.prompt, editable_mask=editable),
                    state.item_id)
    errors, warnings = findings(item, kept) if drags or not state.drags else ([], [])
    problems += [_error(e.field, e.reason) for e in errors]
    problems += [Finding(drag=_drag_index(w), field=w.split(":")[0], message=w, level="warning")
                 for w in warnings]
    return item, problems, drawable(item, problems, kept)


def drawable(item: EditItem, found: list[Finding], kept: list[int]) -> EditItem:
    """The item with only its drags that have no error, validated (masks cut to M): what the
    instant preview can draw while other drags are still being fixed."""
    if any(f.level == "error" and f.drag is None and f.field != "item_id" for f in found):
        return replace(item, instruction=Instruction(drags=()))
    bad = {f.drag for f in found if f.level == "error"}
    drags = tuple(d for d, i in zip(item.instruction.drags, kept, strict=True) if i not in bad)
    item = replace(item, instruction=replace(item.instruction, drags=drags))
    return validate_item(item) if drags else item


def _drag(spec: DragSpec, mask: np.ndarray) -> Drag:
    return Drag(type=spec.type, handle_mask=mask, handle=spec.handle, target=spec.target,
                center=spec.center, axis=spec.axis)
