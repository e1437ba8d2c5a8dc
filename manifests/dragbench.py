"""Import DragBench samples (`<category>/<sample>/original_image.png` + `meta_data.pkl`) as
manifest rows (SPEC §5). Each handle/target pair becomes a `translate` drag whose handle
region is a disc around the handle point inside the editable mask.

The pickle is untrusted input: it is read by an unpickler that admits only what DragBench
files hold (a dict of str, lists of numbers, and one numeric numpy array).
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from pathlib import Path

import numpy as np
from PIL import Image

from manifests.schema import write_manifest
from manifests.storage import join, parent, write_bytes

log = logging.getLogger(__name__)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(ValueError):
    """A pickle that asks for anything beyond DragBench's own types."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused to load {module}.{name}: a DragBench "
                                    "meta_data.pkl holds only str, lists and numpy arrays") from None


def load_meta(path: Path) -> dict:
    """`prompt`, `points` ([[x, y], …], handle/target alternating) and `mask` (H, W)."""
    try:
        meta = _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except UnsafePickleError:
        raise
    except Exception as error:
        raise UnsafePickleError(f"{path}: not a readable DragBench pickle ({error})") from None
    if not isinstance(meta, dict) or not {"prompt", "points", "mask"} <= meta.keys():
        raise UnsafePickleError(f"{path}: expected a dict with prompt, points and mask")
    mask, points = meta["mask"], meta["points"]
    if not (isinstance(mask, np.ndarray) and mask.ndim == 2 and mask.dtype.kind in "biuf"):
        raise UnsafePickleError(f"{path}: mask must be a 2-D numeric array")
    pairs = np.asarray(points, dtype=np.float64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) < 2 or len(pairs) % 2:
        raise UnsafePickleError(f"{path}: points must be handle/target pairs of [x, y]")
    return {"prompt": str(meta["prompt"]).strip(), "points": pairs, "mask": mask != 0}


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


def import_sample(sample: Path, root: Path, out_dir: str, radius: int | None) -> dict:
    meta = load_meta(sample / "meta_data.pkl")
    image = Image.open(sample / "original_image.png").convert("RGB")
    item_id = re.sub(r"[^A-Za-z0-9._-]", "_", "__".join(sample.relative_to(root).parts))[:128]
    r = radius or max(4, round(0.04 * min(image.size)))
    write_bytes(join(out_dir, "images", f"{item_id}.png"), _png(image))
    write_bytes(join(out_dir, "masks", f"{item_id}.editable.png"), _png(meta["mask"]))
    drags = []
    for i, (handle, target) in enumerate(meta["points"].reshape(-1, 2, 2)):
        name = f"masks/{item_id}.handle{i}.png"
        write_bytes(join(out_dir, name), _png(handle_disc(meta["mask"], handle, r)))
        drags.append({"type": "translate", "handle_mask_uri": name,
                      "handle": {"x": handle[0], "y": handle[1]},
                      "target": {"x": target[0], "y": target[1]}, "center": None})
    return {"item_id": item_id, "image_uri": f"images/{item_id}.png", "prompt": meta["prompt"],
            "editable_mask_uri": f"masks/{item_id}.editable.png", "drags": drags, "params": None}


def import_dragbench(root: str | Path, manifest_uri: str, radius: int | None = None) -> list[dict]:
    """Write a manifest of every DragBench sample under `root`, its images and masks beside it."""
    root = Path(root)
    samples = sample_dirs(root)
    if not samples:
        raise FileNotFoundError(f"no DragBench samples (*/meta_data.pkl) under {root}")
    out_dir = parent(manifest_uri)
    rows = [import_sample(sample, root, out_dir, radius) for sample in samples]
    write_manifest(rows, manifest_uri)
    log.info("imported %d DragBench samples into %s", len(rows), manifest_uri)
    return rows
