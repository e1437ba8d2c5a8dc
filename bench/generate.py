"""Write benchmark cases as a manifest (so they run through the same pipeline as any
batch) plus their expected images and a `ground_truth.parquet` of what to score against.

    python -m bench.generate --n 30 --seed 0 --out out/bench
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from bench.cases import TYPES, Case, enlarged, make_case
from manifests.schema import write_manifest, write_table
from manifests.storage import join, write_bytes


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array.astype(np.uint8) * (255 if array.dtype == bool else 1)).save(out, "PNG")
    return out.getvalue()


def _point(p) -> dict | None:
    return None if p is None else {"x": float(p[0]), "y": float(p[1])}


def cases(n: int, seed: int, types: tuple[str, ...] = TYPES, scale: int = 1) -> list[Case]:
    """n cases of each drag type, seeds seed … seed + n − 1; `scale` > 1: each in a picture that
    many times bigger, its shapes at their own size (`enlarged`)."""
    return [enlarged(make_case(kind, seed + i), scale) for kind in types for i in range(n)]


def write(all_cases: list[Case], out: str) -> str:
    """The manifest URI; images, masks and expected images go beside it."""
    rows, truth = [], []
    for case in all_cases:
        name = case.case_id
        files = {"image": f"images/{name}.png", "expected": f"expected/{name}.png",
                 "editable": f"masks/{name}.editable.png", "handle": f"masks/{name}.handle.png"}
        write_bytes(join(out, files["image"]), _png(case.scene.render()))
        write_bytes(join(out, files["expected"]), _png(case.expected.render()))
        write_bytes(join(out, files["editable"]), _png(case.editable_mask()))
        write_bytes(join(out, files["handle"]), _png(case.handle_mask()))
        rows.append({"item_id": name, "image_uri": files["image"], "prompt": case.scene.prompt(),
                     "editable_mask_uri": files["editable"], "params": None,
                     "drags": [{"type": case.type, "handle_mask_uri": files["handle"],
                                "handle": _point(case.handle), "target": _point(case.target),
                                "center": _point(case.center)}]})
        truth.append({"item_id": name, "type": case.type, "expected_uri": files["expected"],
                      "object_colour": list(case.colour), "shape": case.shape.kind,
                      "neighbour_colours": [list(c) for c in case.neighbour_colours]})
    manifest = join(out, "manifest.parquet")
    write_manifest(rows, manifest)
    write_table(pa.Table.from_pylist(truth), join(out, "ground_truth.parquet"))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="cases per drag type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/bench")
    args = parser.parse_args()
    print(write(cases(args.n, args.seed), args.out))


if __name__ == "__main__":
    main()
