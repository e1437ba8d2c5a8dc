"""Masks inline in manifests and instructions (COCO polygons and RLE): they equal their PNG
equivalents pixel for pixel, hostile ones are refused naming the item and the field, and
manifests written before them still read."""

import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from command.main import main
from dragnext.config import EditConfig
from dragnext.inline_mask import MAX_POLYGON_VERTICES, InlineMask, InvalidMask, Rle, check, decode, encode
from dragnext.instruction import EditItem, read_instruction, validate_item
from infra.faults import WRAPPING_RLE, zigzag
from manifests.dragbench import import_dragbench
from manifests.items import conform, load_item, validate_rows
from manifests.schema import read_table, write_manifest
from manifests.uris import UriPolicy
from tests.scenes import SYNTHETIC, dragbench_subset

# A pentagon around the synthetic scene's translate handle (its disc at about (40, 48)).
PENTAGON = [28.0, 40.0, 44.0, 34.0, 54.0, 46.0, 46.0, 60.0, 30.0, 58.0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decoder, under numpy 2
def test_run_length_strings_decode_as_pycocotools_decodes_them():
    rng = np.random.default_rng(0)
    for trial in range(100):
        height, width = rng.integers(1, 50, 2)
        mask = rng.random((height, width)) < rng.random()
        counts = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        ours = decode(InlineMask(rle=Rle(size=(height, width), counts=counts.decode())), (width, height))
        theirs = coco_mask.decode({"size": [int(height), int(width)], "counts": counts}).astype(bool)
        assert (ours == theirs).all() and (ours == mask).all(), trial
        assert (decode(encode(mask), (width, height)) == mask).all()


@pytest.mark.parametrize("mask, size, part, reason", [
    (InlineMask(rle=Rle(size=(4, 4), counts="0:")), (4, 4), "rle.counts", "cover 10 pixels, the mask has 16"),
    (InlineMask(rle=Rle(size=(4, 4), counts="0\x7f")), (4, 4), "rle.counts", "not in COCO's alphabet"),
    (InlineMask(rle=Rle(size=(4, 4), counts="0P")), (4, 4), "rle.counts", "ends inside a number"),
    (InlineMask(rle=Rle(size=(4, 4), counts="<0")), (5, 4), "rle.size", "the mask is 4x4, the image is 5x4"),
    (InlineMask(polygons=[[1, 1, 3, 1]]), (8, 8), "polygons[0]", "4 numbers"),
    (InlineMask(polygons=[[1, 1, 3, 1, 3, float("nan")]]), (8, 8), "polygons[0]", "finite"),
    (InlineMask(polygons=[[1, 1, 30, 1, 3, 3]]), (8, 8), "polygons[0]", "outside the 8x8 image"),
    (InlineMask(polygons=[[0.0, 0.0] * (MAX_POLYGON_VERTICES + 1)]), (8, 8), "polygons", "vertices; at most"),
])
def test_a_hostile_inline_mask_is_refused_before_anything_is_decoded(mask, size, part, reason):
    # "0:" is runs 0 and 10 (10 pixels for 16): pycocotools' decoder would be handed a short
    # string without complaint; a longer one than the mask makes it write past its buffer.
    with pytest.raises(InvalidMask) as caught:
        decode(mask, size)
    assert caught.value.part == part and reason in caught.value.reason


def inline_rows(folder):
    """The synthetic manifest's translate row three ways: PNG masks, polygon, RLE."""
    rows = read_table(str(folder / "manifest.parquet")).to_pylist()
    png = rows[0]
    width, height = Image.open(folder / png["image_uri"]).size
    polygon = {"polygons": [PENTAGON], "rle": None}
    polygon_png = decode(InlineMask(polygons=[PENTAGON]), (width, height))
    Image.fromarray(polygon_png.astype(np.uint8) * 255).save(folder / "pentagon.png")
    handle_png = np.asarray(Image.open(folder / png["drags"][0]["handle_mask_uri"])) != 0
    drag = png["drags"][0]
    return [
        {**png, "item_id": "png", "editable_mask_uri": "pentagon.png"},
        {**png, "item_id": "polygon", "editable_mask": polygon},
        {**png, "item_id": "rle", "editable_mask": encode(polygon_png).model_dump(),
         "drags": [{**drag, "handle_mask_uri": None, "handle_mask": encode(handle_png).model_dump()}]},
    ]


def test_polygon_and_rle_masks_in_a_manifest_equal_their_png_equivalents(tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(SYNTHETIC.parent, folder)
    rows = inline_rows(folder)
    write_manifest(rows, str(folder / "manifest.parquet"))
    assert main(["manifest", "validate", str(folder / "manifest.parquet")]) == 0, \
        capsys.readouterr().out
    policy = UriPolicy(str(folder))
    rows = read_table(str(folder / "manifest.parquet")).to_pylist()
    items = {r["item_id"]: load_item(r, policy) for r in rows}
    png = items["png"].instruction
    assert png.editable_mask.sum() > 100
    for name in ("polygon", "rle"):
        inline = items[name].instruction
        assert (inline.editable_mask == png.editable_mask).all(), name
        assert (inline.drags[0].handle_mask == png.drags[0].handle_mask).all(), name


def test_inline_masks_that_are_wrong_name_the_item_and_the_field(tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(SYNTHETIC.parent, folder)
    good = inline_rows(folder)[2]
    drag = good["drags"][0]
    bad = [
        {**good, "item_id": "short-runs", "drags": [{**drag, "handle_mask": {"polygons": None,
                                                     "rle": {"size": [96, 128], "counts": "0:"}}}]},
        {**good, "item_id": "wrong-size", "editable_mask": encode(np.ones((10, 10), bool)).model_dump()},
        {**good, "item_id": "off-image", "editable_mask": {"polygons": [[0, 0, 500, 0, 0, 50]], "rle": None}},
        {**good, "item_id": "both", "drags": [{**drag, "handle_mask_uri": "pentagon.png"}]},
        {**good, "item_id": "neither", "drags": [{**drag, "handle_mask": None}]},
        {**good, "item_id": "empty-form", "editable_mask": {"polygons": None, "rle": None}},
    ]
    write_manifest([good, *bad], str(folder / "manifest.parquet"))
    assert main(["manifest", "validate", str(folder / "manifest.parquet")]) == 1
    out = capsys.readouterr().out
    expected = [("short-runs", "drags[0].handle_mask.rle.counts: the runs cover 10 pixels"),
                ("wrong-size", "editable_mask.rle.size: the mask is 10x10, the image is 96x64"),
                ("off-image", "editable_mask.polygons[0]: a vertex lies outside the 96x64 image"),
                ("both", "drags[0].handle_mask_uri: give drags[0].handle_mask_uri or drags[0].handle_mask"),
                ("neither", "drags[0].handle_mask_uri: one of drags[0].handle_mask_uri and"),
                ("empty-form", "editable_mask: Value error, give exactly one of polygons and rle")]
    for item, text in expected:
        assert any(f"'{item}'" in line and text in line for line in out.splitlines()), (item, out)
    assert "7 rows, 6 invalid" in out and "'rle'" not in out
    assert "Traceback" not in out


def test_a_manifest_written_before_inline_masks_still_reads():
    table = read_table(str(SYNTHETIC))
    assert "handle_mask:" not in str(table.schema.field("drags").type)  # written before they existed
    conformed = conform(table)
    assert conformed.problems == []
    rows = conformed.table.to_pylist()
    assert {r["editable_mask"] is None for r in rows} == {True}
    assert {d["handle_mask"] is None for r in rows for d in r["drags"]} == {True}
    assert validate_rows(rows, EditConfig(), UriPolicy(str(SYNTHETIC.parent)), "files") == []


def test_an_instruction_file_takes_inline_masks(scene):
    folder, spec = scene
    image = Image.open(folder / "image.png").convert("RGB")
    by_file = validate_item(EditItem(image, read_instruction(_write(folder, spec), "it"), "it"))
    first = by_file.instruction.drags[0].handle_mask
    as_rle = encode(first).model_dump(exclude_none=True)
    inline = {**spec, "drags": [{**spec["drags"][0], "handle_mask": as_rle}, *spec["drags"][1:]]}
    path = _write(folder, inline)
    item = validate_item(EditItem(image, read_instruction(path, "it", image.size), "it"))
    assert (item.instruction.drags[0].handle_mask == first).all()
    with pytest.raises(ValueError, match="drags\\[0\\].handle_mask: an inline mask needs the image's size"):
        read_instruction(path, "it")


def _write(folder, spec):
    path = folder / "drag.json"
    path.write_text(json.dumps(spec))
    return path


def test_the_dragbench_importer_writes_inline_masks_that_equal_its_pngs(tmp_path):
    root = dragbench_subset(tmp_path, ["building_countryside_view"])
    png_rows = import_dragbench(root, str(tmp_path / "png" / "manifest.parquet"))
    rle_rows = import_dragbench(root, str(tmp_path / "rle" / "manifest.parquet"), inline_masks=True)
    assert not (tmp_path / "rle" / "masks").exists()  # nothing but the images beside it
    rle_rows = read_table(str(tmp_path / "rle" / "manifest.parquet")).to_pylist()
    assert validate_rows(rle_rows, EditConfig(), UriPolicy(str(tmp_path / "rle")), "files") == []
    png = load_item(png_rows[0], UriPolicy(str(tmp_path / "png"))).instruction
    rle = load_item(rle_rows[0], UriPolicy(str(tmp_path / "rle"))).instruction
    assert (png.editable_mask == rle.editable_mask).all()
    assert all((a.handle_mask == b.handle_mask).all() for a, b in zip(png.drags, rle.drags, strict=True))




@pytest.mark.parametrize("mask, part, reason", [
    (InlineMask(rle=Rle(size=(64, 64), counts=WRAPPING_RLE["counts"])), "rle.counts", "at most 7"),
    (InlineMask(rle=Rle(size=(64, 64), counts="PPPPPP1" * 3)), "rle.counts", "run 0 is 1,073,741,824 pixels"),
    (InlineMask(polygons=[zigzag(64, 64, 40_000)]), "polygons", "outlines 2,520,000 pixels long"),
    (InlineMask(polygons=[[1.0, 1.0, 2.0, 1.0, 1.0, 2.0]] * 1001), "polygons",
     "1,001 polygons; at most 1,000"),
    (InlineMask(rle=Rle(size=(64, 64), counts="")), "rle.counts", "the runs cover 0 pixels"),
])
def test_a_mask_that_would_crash_or_stall_the_decoder_is_refused_by_its_check(mask, part, reason):
    for call in (lambda: check(mask, (64, 64)), lambda: decode(mask, (64, 64))):
        with pytest.raises(InvalidMask) as caught:
            call()
        assert caught.value.part == part and reason in caught.value.reason


def test_a_long_run_length_string_parses_in_well_under_a_second():
    rng = np.random.default_rng(0)
    mask = rng.random((2000, 2000)) < 0.5  # about 2 M runs: near the 4 M character bound
    rle = encode(mask).rle
    start = time.perf_counter()
    assert (decode(InlineMask(rle=rle), (2000, 2000)) == mask).all()
    assert time.perf_counter() - start < 1.0  # the Python parser took 3.3 s per 4 M characters


def _killer_rows(folder):
    good = inline_rows(folder)[2]
    drag = good["drags"][0]
    return good, [
        {**good, "item_id": "rle-wrap", "drags": [{**drag, "handle_mask": {"polygons": None,
                                                   "rle": WRAPPING_RLE}}]},
        {**good, "item_id": "polygon-bomb", "editable_mask": {"polygons": [zigzag(96, 64, 100_000)],
                                                             "rle": None}},
        {**good, "item_id": "rle-heavy", "editable_mask": {"polygons": None, "rle": {
            "size": [64, 96], "counts": "0" * 3_000_000}},
         "drags": [{**drag, "handle_mask": {"polygons": None, "rle": {"size": [64, 96],
                                                                     "counts": "0" * 3_000_000}}}] * 2},
    ]


def test_manifest_validate_refuses_masks_that_would_crash_the_decoder_as_invalid_rows(tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(SYNTHETIC.parent, folder)
    good, killers = _killer_rows(folder)
    write_manifest([good, *killers], str(folder / "manifest.parquet"))
    start = time.perf_counter()
    assert main(["manifest", "validate", str(folder / "manifest.parquet")]) == 1
    assert time.perf_counter() - start < 30
    out = capsys.readouterr().out
    expected = [("rle-wrap", "drags[0].handle_mask.rle.counts: run 0 is a number of 13 characters"),
                ("polygon-bomb", "editable_mask.polygons: outlines"),
                ("rle-heavy", "drags: inline RLE masks of 9,000,000 characters in all; at most 8,000,000")]
    for item, text in expected:
        assert any(f"'{item}'" in line and text in line for line in out.splitlines()), (item, out)
    assert "4 rows, 3 invalid" in out and "Traceback" not in out


def test_a_manifest_whose_repeated_masks_decode_to_gigabytes_is_refused_before_decoding(tmp_path):
    """Parquet's dictionary makes 400 copies of a 4 M character string a file of a few kB;
    decoded they are 1.6 GB. The manifest is refused from the dictionary's lengths."""
    rows = 400
    for compliant in (True, False):  # pyarrow < 13 named a list's items `item`, not `element`
        _refused_before_decoding(tmp_path, rows, compliant)


def _refused_before_decoding(tmp_path, rows: int, compliant: bool) -> None:
    import resource

    import pyarrow as pa
    import pyarrow.parquet as pq

    from manifests.items import read_manifest
    from manifests.schema import MANIFEST, ManifestError

    counts = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["0" * 4_000_000]))
    rle = pa.StructArray.from_arrays([pa.array([[64, 96]] * rows, pa.list_(pa.int64())), counts],
                                     names=["size", "counts"])
    editable = pa.StructArray.from_arrays([pa.nulls(rows, MANIFEST.field("editable_mask").type[0].type), rle],
                                          names=["polygons", "rle"])
    table = pa.table({"item_id": [f"r{i}" for i in range(rows)], "image_uri": ["image.png"] * rows,
                      "editable_mask": editable,
                      "drags": pa.array([[]] * rows, MANIFEST.field("drags").type)})
    path = tmp_path / "manifest.parquet"
    pq.write_table(table, path, use_compliant_nested_type=compliant)
    assert path.stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ManifestError, match="1,600,000,000 characters in all; at most 256,000,000"):
        read_manifest(str(path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # kB: nothing decoded
    polygons = pa.table({"item_id": ["p"], "image_uri": ["image.png"], "editable_mask": pa.array(
        [{"polygons": [[0.0, 1.0, 2.0] * 11_000_000], "rle": None}], MANIFEST.field("editable_mask").type),
        "drags": pa.array([[]], MANIFEST.field("drags").type)})
    pq.write_table(polygons, path, use_compliant_nested_type=compliant)
    with pytest.raises(ManifestError, match="polygons hold 33,000,00[0-9] coordinates in all; at most 32,"):
        read_manifest(str(path))


def test_edit_and_the_studio_refuse_a_wrapping_run_length_mask_in_one_line(scene, capsys):
    from studio.state import Region

    folder, spec = scene
    wrapping = {"rle": {**WRAPPING_RLE, "size": [96, 128]}}
    inline = {**spec, "drags": [{**spec["drags"][0], "handle_mask": wrapping}]}
    path = _write(folder, inline)
    assert main(["-q", "edit", "--image", str(folder / "image.png"), "--instruction", str(path),
                 "--out", str(folder / "edited.png"), "--model", "fixture/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "drags[0].handle_mask.rle.counts: run 0 is a number of 13 characters" in err
    assert len(err.splitlines()) == 1 and not (folder / "edited.png").exists()
    with pytest.raises(InvalidMask, match="a number of 13 characters"):  # the studio's regions decode so
        Region(rle=Rle(size=(96, 128), counts=WRAPPING_RLE["counts"])).mask((128, 96))
