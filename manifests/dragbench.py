"""Import DragBench samples (`<category>/<sample>/original_image.png` + `meta_data.pkl`) as
manifest rows (SPEC §5). Each handle/target pair becomes a `translate` drag whose handle
region is a disc around the handle point inside the editable mask.

The pickle is untrusted input: it is read by an unpickler that admits only what DragBench
files hold (a dict of str, lists of numbers, and one numeric numpy array), and builds no
array larger than the sample's image (a pickle of a few bytes can ask numpy for gigabytes).
The image's size is read from its header first and bounded like a manifest's images; every
file read must lie under the DragBench folder after resolving symlinks. Every sample is
checked before anything is written, and two samples whose ids collide after sanitising get
distinct ids.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import pickle
import re
from pathlib import Path

import numpy as np
from PIL import Image

from dragnext.inline_mask import encode
from dragnext.instruction import MAX_IMAGE_PIXELS, InvalidItemError, read_image
from manifests.schema import write_manifest
from manifests.storage import join, parent, write_bytes

log = logging.getLogger(__name__)

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_RECONSTRUCT_NAMES = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
MAX_PICKLE_BYTES = 64 * 1024 * 1024


class UnsafePickleError(ValueError):
    """A pickle that asks for anything beyond DragBench's own types."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, max_elements: int):
        super().__init__(io.BytesIO(data))
        self.max_elements = max_elements

    def _reconstruct(self, subtype, shape, dtype):
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape) \
                or math.prod(shape) > self.max_elements:
            raise UnsafePickleError(f"refused an array of shape {shape}: larger than the image "
                                    f"({self.max_elements:,} elements)")
        return _RECONSTRUCT(subtype, shape, dtype)

    def find_class(self, module: str, name: str):
        if (module, name) in _RECONSTRUCT_NAMES:
            return self._reconstruct
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load {module}.{name}: a DragBench "
                                    "meta_data.pkl holds only str, lists and numpy arrays") from None


def load_meta(path: Path, max_elements: int = MAX_IMAGE_PIXELS) -> dict:
    """`prompt`, `points` ([[x, y], …], handle/target alternating) and `mask` (H, W); no
    array of more than `max_elements` is built."""
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"{path}: {path.stat().st_size:,} bytes is no DragBench pickle")
    try:
        meta = _RestrictedUnpickler(path.read_bytes(), max_elements).load()
    except UnsafePickleError:
        raise
    except Exception as error:
        raise UnsafePickleError(f"{path}: not a readable DragBench pickle ({error})") from None
    if not isinstance(meta, dict) or not {"prompt", "points", "mask"} <= meta.keys():
        raise UnsafePickleError(f"{path}: expected a dict with prompt, points and mask")
    mask, points = meta["mask"], meta["points"]
    if not (isinstance(mask, np.ndarray) and mask.ndim == 2 and mask.dtype.kind in "biuf"):
        raise UnsafePickleError(f"{path}: mask must be a 2-D numeric array")
    try:
        pairs = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise UnsafePickleError(f"{path}: points must be handle/target pairs of [x, y] numbers") from None
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) < 2 or len(pairs) % 2:
        raise UnsafePickleError(f"{path}: points must be handle/target pairs of [x, y]")
    return {"prompt": str(meta["prompt"]).strip(), "points": pairs, "mask": mask != 0}


class BadSampleError(ValueError):
    """A DragBench sample that cannot be imported; names the sample and what is wrong."""


def _inside(path: Path, root: Path) -> Path:
    """The real path of a file under the DragBench folder; refused if it leads elsewhere."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise BadSampleError(f"{path} leads outside {root} (to {real}): refused")
    if not real.is_file():
        raise BadSampleError(f"{path} is not a regular file")
    return real


def handle_disc(editable: np.ndarray, handle: np.ndarray, radius: int) -> np.ndarray:
    ys, xs = np.mgrid[: editable.shape[0], : editable.shape[1]]
    disc = (xs - handle[0]) ** 2 + (ys - handle[1]) ** 2 <= radius**2
    inside = disc & editable
    return inside if inside.any() else disc  # validation reports a handle outside M


def _png(mask_or_image) -> bytes:
    image = mask_or_image if isinstance(mask_or_image, Image.Image) else \
        Image.fromarray(mask_or_image.astype(np.uint8) * 255)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sample_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("meta_data.pkl"))


def read_sample(sample: Path, root: Path) -> tuple[Image.Image, dict]:
    """The sample's image (checked from its header before decoding) and its checked meta."""
    name = str(sample.relative_to(root))
    try:
        image = read_image(_inside(sample / "original_image.png", root), name, "original_image.png")
    except InvalidItemError as error:
        raise BadSampleError(f"sample {name}: original_image.png: {error.reason}") from None
    meta = load_meta(_inside(sample / "meta_data.pkl", root), max_elements=image.width * image.height)
    if meta["mask"].shape != (image.height, image.width):
        raise BadSampleError(f"sample {name}: mask is {meta['mask'].shape[1]}x{meta['mask'].shape[0]}, "
                             f"the image is {image.width}x{image.height}")
    for k, (x, y) in enumerate(meta["points"]):
        inside = 0 <= x <= image.width - 1 and 0 <= y <= image.height - 1
        if not (np.isfinite(x) and np.isfinite(y) and inside):
            raise BadSampleError(f"sample {name}: points[{k}] = [{x:g}, {y:g}] is not a point inside the "
                                 f"{image.width}x{image.height} image")
    return image, meta


def sample_ids(samples: list[Path], root: Path) -> list[str]:
    """Ids from the samples' folders, sanitised to the manifest's alphabet; one that collides
    with another (`a b` and `a_b`) gets a suffix from its folder's own name."""
    ids, seen = [], set()
    for sample in samples:
        relative = "__".join(sample.relative_to(root).parts)
        item_id = re.sub(r"[^A-Za-z0-9._-]", "_", relative)[:128]
        if item_id in seen:
            item_id = f"{item_id[:119]}__{hashlib.sha256(relative.encode()).hexdigest()[:7]}"
        seen.add(item_id)
        ids.append(item_id)
    return ids


def sample_row(item_id: str, image: Image.Image, meta: dict, out_dir: str, radius: int | None,
               inline_masks: bool = False) -> dict:
    """Write the sample's image (and masks, unless inline) beside the manifest; its manifest row."""
    r = radius or max(4, round(0.04 * min(image.size)))
    write_bytes(join(out_dir, "images", f"{item_id}.png"), _png(image))

    def mask(array: np.ndarray, name: str) -> dict:  # the row's two columns for one mask
        if inline_masks:
            return {"uri": None, "inline": encode(array.astype(bool)).model_dump()}
        write_bytes(join(out_dir, name), _png(array))
        return {"uri": name, "inline": None}

    editable = mask(meta["mask"], f"masks/{item_id}.editable.png")
    drags = []
    for i, (handle, target) in enumerate(meta["points"].reshape(-1, 2, 2)):
        handle_mask = mask(handle_disc(meta["mask"], handle, r), f"masks/{item_id}.handle{i}.png")
        drags.append({"type": "translate", "handle_mask_uri": handle_mask["uri"],
                      "handle_mask": handle_mask["inline"], "handle": {"x": handle[0], "y": handle[1]},
                      "target": {"x": target[0], "y": target[1]}, "center": None})
    return {"item_id": item_id, "image_uri": f"images/{item_id}.png", "prompt": meta["prompt"],
            "editable_mask_uri": editable["uri"], "editable_mask": editable["inline"], "drags": drags,
            "params": None}


def import_dragbench(root: str | Path, manifest_uri: str, radius: int | None = None,
                     inline_masks: bool = False) -> list[dict]:
    """Write a manifest of every DragBench sample under `root`, its images and masks beside it
    (or the masks inline in the rows, as COCO RLE). Every sample is read and checked first: a
    bad one raises, naming it, and nothing is written."""
    root = Path(root)
    samples = sample_dirs(root)
    if not samples:
        raise FileNotFoundError(f"no DragBench samples (*/meta_data.pkl) under {root}")
    read = [read_sample(sample, root) for sample in samples]
    out_dir = parent(manifest_uri)
    rows = [sample_row(item_id, image, meta, out_dir, radius, inline_masks)
            for item_id, (image, meta) in zip(sample_ids(samples, root), read, strict=True)]
    write_manifest(rows, manifest_uri)
    log.info("imported %d DragBench samples into %s", len(rows), manifest_uri)
    return rows
