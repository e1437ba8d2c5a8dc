"""The manifest contract: schema, validation of every row, storage URIs, DragBench import."""

import io
import json
import pickle
import shutil

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from command.main import main
from dragnext.config import EditConfig
from manifests.dragbench import UnsafePickleError, import_dragbench, load_meta
from manifests.items import conform, load_item, validate_rows
from manifests.schema import MANIFEST, SCHEMA_VERSION, VERSION_KEY, read_table, write_manifest
from manifests.storage import resolve
from manifests.uris import UriPolicy
from tests.scenes import SYNTHETIC, dragbench_subset


def test_the_schema_is_versioned_and_keeps_extra_columns():
    assert MANIFEST.metadata[VERSION_KEY] == SCHEMA_VERSION.encode()
    table = read_table(str(SYNTHETIC)).append_column("customer", pa.array(["a", "b", "c"]))
    result = conform(table)
    conformed = result.table
    assert result.problems == [] and conformed.column_names[-1] == "customer"
    assert conform(table.drop_columns(["drags"])).problems == ["missing column(s): drags"]
    assert "axis" not in str(table.schema.field("drags").type)  # written before scale drags existed
    assert conformed.schema.field("drags").type == MANIFEST.field("drags").type
    assert {d["axis"] for r in conformed.to_pylist() for d in r["drags"]} == {None}
    old = table.replace_schema_metadata({VERSION_KEY: b"0"})
    assert "schema version 0" in conform(old).problems[0]


def test_relative_uris_resolve_against_the_manifest():
    assert resolve("masks/a.png", "s3://bucket/run") == "s3://bucket/run/masks/a.png"
    assert resolve("../x.png", "s3://bucket/run") == "s3://bucket/x.png"
    assert resolve("s3://other/y.png", "/local") == "s3://other/y.png"
    assert resolve("a.png", "/data/m") == "/data/m/a.png"


def test_the_shipped_synthetic_manifest_is_valid():
    rows = read_table(str(SYNTHETIC)).to_pylist()
    assert [r["drags"][0]["type"] for r in rows] == ["translate", "deform", "rotate"]
    assert validate_rows(rows, EditConfig(), UriPolicy(str(SYNTHETIC.parent)), "files") == []


def test_the_validator_reports_every_bad_row(tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(SYNTHETIC.parent, folder)
    rows = read_table(str(folder / "manifest.parquet")).to_pylist()
    good = rows[0]
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(folder / "small.png")
    bad = [
        {**good, "item_id": "has space"},
        {**good, "item_id": "twice"}, {**good, "item_id": "twice"},
        {**rows[2], "item_id": "no-centre",
         "drags": [{**rows[2]["drags"][0], "center": None}]},
        {**good, "item_id": "bad-params", "params": "{not json"},
        {**good, "item_id": "bad-key", "params": json.dumps({"pbsi.iters": 3})},
        {**good, "item_id": "no-image", "image_uri": "missing.png"},
        {**good, "item_id": "small-mask", "editable_mask_uri": "small.png"},
        {**rows[2], "item_id": "scale-free-flat",  # handle and centre share y = 32
         "drags": [{**rows[2]["drags"][0], "type": "scale", "axis": "free"}]},
        {**rows[2], "item_id": "scale-ok",
         "drags": [{**rows[2]["drags"][0], "type": "scale", "target": {"x": 40.0, "y": 32.0}}]},
    ]
    write_manifest(rows + bad, str(folder / "manifest.parquet"))
    assert main(["manifest", "validate", str(folder / "manifest.parquet")]) == 1
    out = capsys.readouterr().out
    expected = [("has space", "item_id"), ("twice", "appears 2 times"), ("no-centre", "drags[0].center"),
                ("bad-params", "params: not valid JSON"), ("bad-key", "pbsi.iters"),
                ("no-image", "image_uri: "), ("small-mask", "editable_mask_uri: mask is 10x10"),
                ("scale-free-flat", "drags[0].handle: has the centre's y = 32")]
    for item, text in expected:
        assert any(f"'{item}'" in line and text in line for line in out.splitlines()), (item, out)
    assert "13 rows, 9 invalid" in out and "'scale-ok'" not in out


def test_dragbench_import_keeps_sizes_prompts_and_every_drag(tmp_path):
    root = dragbench_subset(tmp_path, ["building_countryside_view", "other_objects"])
    rows = import_dragbench(root, str(tmp_path / "out" / "manifest.parquet"))
    by_id = {r["item_id"].split("__")[0]: r for r in rows}
    country = by_id["building_countryside_view"]
    assert len(country["drags"]) == 2 and country["prompt"].startswith("countryside")
    assert len(by_id["other_objects"]["drags"]) == 3
    item = load_item(country, UriPolicy(str(tmp_path / "out")))
    assert item.size == (512, 682)  # non-square kept as it is
    assert all(d.handle_mask.any() for d in item.instruction.drags)
    first = item.instruction.drags[0]
    assert first.handle == (72.0, 415.0) and first.target == (58.0, 349.0)
    assert not (first.handle_mask & ~item.editable).any()  # the disc lies inside M


class Boom:
    def __reduce__(self):
        return (shutil.rmtree, ("/definitely-not-here",))


def test_the_importer_refuses_a_crafted_pickle(tmp_path, capsys):
    root = dragbench_subset(tmp_path, ["animals"])
    pkl = next(root.rglob("meta_data.pkl"))
    pkl.write_bytes(pickle.dumps({"prompt": "x", "points": [[1, 1], [2, 2]], "mask": Boom()}))
    with pytest.raises(UnsafePickleError, match="refused to load shutil.rmtree"):
        load_meta(pkl)
    assert main(["manifest", "from-dragbench", str(root), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "refused to load shutil.rmtree" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_a_pickle_of_the_right_types_but_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "meta_data.pkl"
    path.write_bytes(pickle.dumps({"prompt": "x", "points": [[1, 1]], "mask": np.ones((4, 4))}))
    with pytest.raises(UnsafePickleError, match="handle/target pairs"):
        load_meta(path)
    path.write_bytes(pickle.dumps({"prompt": "x", "points": [[1, 1], [2, 2]],
                                   "mask": np.array([io.BytesIO()], dtype=object)}))
    with pytest.raises(UnsafePickleError):
        load_meta(path)
