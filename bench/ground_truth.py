"""Score a `dragnext run` (or `demo`) of generated benchmark cases from its files: each
succeeded item's edited image against the `ground_truth.parquet` beside the manifest."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from dragnext.metrics import score_edit
from manifests.schema import read_table
from manifests.storage import join, read_bytes


def _image(uri: str, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(read_bytes(uri))).convert(mode))


def score_results(manifest_uri: str, results: list[dict]) -> list[dict]:
    """{item_id, preview_uri, and `score_edit`'s scores} per succeeded result row, in the
    manifest's order. The ground truth and the relative URIs resolve beside the manifest."""
    folder = manifest_uri.rsplit("/", 1)[0]
    rows = {r["item_id"]: r for r in read_table(manifest_uri).to_pylist()}
    done = {r["item_id"]: r for r in results if r["status"] == "succeeded"}
    scored = []
    for truth in read_table(join(folder, "ground_truth.parquet")).to_pylist():
        item_id = truth["item_id"]
        if item_id not in done:
            continue
        row = rows[item_id]
        scores = score_edit(_image(join(folder, row["image_uri"])), _image(done[item_id]["image_uri"]),
                            _image(join(folder, truth["expected_uri"])), tuple(truth["object_colour"]),
                            [tuple(c) for c in truth["neighbour_colours"]],
                            _image(join(folder, row["editable_mask_uri"]), "L") > 127)
        scored.append({"item_id": item_id, "preview_uri": done[item_id]["preview_uri"], **scores})
    return scored


def lines(scored: list[dict]) -> list[str]:
    """One line per item: success, the drag alone, strict success with the object's IoU,
    colour error and ghost, the weakest neighbour, the preview."""
    def yes(v):
        return "yes" if v else "no "

    def lowest(v):
        return "  — " if math.isnan(v) else f"{v:.2f}"

    return [f"{s['item_id']:14s} success {yes(s['success'])}  object {yes(s['success_object'])}  "
            f"strict {yes(s['success_strict'])} (IoU {s['iou']:.2f}, colour error {s['colour_err']:4.1f}, "
            f"ghost {100 * s['ghost']:3.0f}%)  neighbour IoU {lowest(s['neighbour_iou'])}  {s['preview_uri']}"
            for s in scored]
