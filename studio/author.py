"""The Author page's work: images people open, the instant preview, and adding an item to a
manifest (its image and masks written beside it, local or S3)."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dragnext.config import EditConfig
from dragnext.inline_mask import encode
from dragnext.instruction import EditItem, InvalidItemError, read_image
from dragnext.peers.warp import warp_latent
from dragnext.preview import overlay
from dragnext.stages import region_drags
from manifests.append import appended, locked
from manifests.items import Problem, load_item, read_manifest, validate_rows
from manifests.schema import ManifestError, write_table
from manifests.storage import exists, join, parent, write_bytes
from manifests.uris import UriPolicy
from studio.state import AuthorState, DragState, Region


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class Images:
    """The images opened in this studio, by the SHA-256 of their PNG bytes (kept on disk, so
    a page reload or a second tab finds them)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, data: bytes, name: str = "upload") -> tuple[str, Image.Image]:
        image = read_image(io.BytesIO(data), name)  # the library's checks: size, bombs, format
        encoded = png(image)
        image_id = hashlib.sha256(encoded).hexdigest()
        path = self.folder / f"{image_id}.png"
        if not path.exists():
            path.write_bytes(encoded)
        return image_id, image

    def get(self, image_id: str) -> Image.Image:
        path = self.folder / f"{image_id}.png"
        if not path.exists():
            raise KeyError(image_id)
        with Image.open(path) as image:
            return image.convert("RGB")


def warp_image(item: EditItem) -> Image.Image:
    """The `warp` method in pixel space: each target region takes its source's pixels through
    Π(1), the part of a handle region left empty is noise (what the denoiser would complete).
    No UNet work, so it keeps up with the mouse."""
    x = torch.from_numpy(np.asarray(item.image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    size = (item.image.height, item.image.width)
    warped = warp_latent(x, region_drags(item, size)) if item.instruction.drags else x
    pixels = (warped[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels)


def instant_preview(item: EditItem) -> tuple[Image.Image, Image.Image, float]:
    """The instruction drawn over the input, and the warp result; with the seconds taken."""
    started = time.perf_counter()
    drawn, warped = overlay(item), warp_image(item)
    return drawn, warped, time.perf_counter() - started


def state_of_row(row: dict, manifest_uri: str, images: Images, allow_prefixes: tuple[str, ...] = ()
                 ) -> AuthorState:
    """A manifest row as the Author page's state (its masks become segmenter-style RLE
    regions, so they can be added to or replaced)."""
    item = load_item(row, UriPolicy(parent(manifest_uri), allow_prefixes))
    image_id, _ = images.add(png(item.image), item.item_id)

    def region(mask: np.ndarray | None) -> Region:
        return Region() if mask is None else Region(rle=encode(mask).rle)

    return AuthorState(
        image_id=image_id, item_id=item.item_id, prompt=item.instruction.prompt,
        editable=region(item.instruction.editable_mask),
        drags=[DragState(type=d.type, region=region(d.handle_mask), handle=d.handle, target=d.target,
                         center=d.center, axis=d.axis) for d in item.instruction.drags])


def _point(p: tuple[float, float] | None) -> dict | None:
    return None if p is None else {"x": p[0], "y": p[1]}


class ManifestWriter:
    """Appends items to manifests: only the new row changes (`manifests.append`), under the
    manifest's own lock, so studios in several processes or on several hosts all land."""

    def __init__(self) -> None:
        self.owner = f"studio-{uuid.uuid4().hex[:12]}"

    def append(self, manifest_uri: str, item: EditItem, params: str | None,
               base: EditConfig) -> tuple[int, list[Problem]]:
        """Write the item's image and masks beside the manifest (`images/`, `masks/`) and
        append its row; return the manifest's rows and its problems after the append (none
        for a manifest that was clean). Refuses an item id the manifest already has."""
        # an owner per append: two requests of one studio must wait for each other too
        with locked(manifest_uri, f"{self.owner}-{uuid.uuid4().hex[:8]}") as table:
            if exists(manifest_uri):
                conformed = read_manifest(manifest_uri)  # as a run will read it
                if conformed.problems:
                    raise ManifestError(f"manifest {manifest_uri} cannot be read: "
                                        f"{'; '.join(conformed.problems)}")
                if item.item_id in conformed.table.column("item_id").to_pylist():
                    raise InvalidItemError(item.item_id, "item_id",
                                           f"the manifest {manifest_uri} already has it")
            folder = parent(manifest_uri)
            write_table(appended(table, [self._write_files(folder, item, params)]), manifest_uri)
        conformed = read_manifest(manifest_uri)
        problems = validate_rows(conformed.table.to_pylist(), base, UriPolicy(folder), "files",
                                 row_problems=conformed.row_problems)
        return conformed.table.num_rows, problems

    @staticmethod
    def _write_files(folder: str, item: EditItem, params: str | None) -> dict:
        stem = hashlib.sha256(item.item_id.encode()).hexdigest()[:12]  # ids may hold any character

        def put(name: str, image: Image.Image) -> str:
            write_bytes(join(folder, name), png(image))
            return name

        def mask(name: str, values: np.ndarray) -> str:
            return put(f"masks/{stem}.{name}.png", Image.fromarray(values.astype(np.uint8) * 255))

        instruction = item.instruction
        return {
            "item_id": item.item_id, "image_uri": put(f"images/{stem}.png", item.image),
            "prompt": instruction.prompt or None,
            "editable_mask_uri": None if instruction.editable_mask is None
            else mask("editable", instruction.editable_mask),
            "editable_mask": None,
            "drags": [{"type": d.type, "handle_mask_uri": mask(f"handle{i}", d.handle_mask),
                       "handle_mask": None, "handle": _point(d.handle), "target": _point(d.target),
                       "center": _point(d.center), "axis": d.axis} for i, d in enumerate(instruction.drags)],
            "params": params,
        }
