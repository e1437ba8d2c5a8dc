"""Bad input never costs a GPU slot and never crashes a command: each malformed kind ends
`invalid` up front, naming the item and the field, and `manifest validate` lists them all."""

import json
import shutil
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.results import read_results
from manifests.schema import MANIFEST, read_table
from tests.conftest import FAST
from tests.test_manifests import SYNTHETIC

pytestmark = pytest.mark.usefixtures("prefect_server")
SETS = [a for s in FAST for a in ("--set", s)]


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size (a decompression bomb is a few hundred bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_rows(rows: list[dict], path) -> str:
    nullable_ids = MANIFEST.set(0, MANIFEST.field(0).with_nullable(True))  # as a careless producer writes
    pq.write_table(pa.Table.from_pylist(rows, schema=nullable_ids), path)
    return str(path)


@pytest.fixture
def job(tmp_path):
    folder = tmp_path / "job"
    shutil.copytree(SYNTHETIC.parent, folder)
    (folder / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (folder / "huge.png").write_bytes(png_claiming(12000, 12000))
    (tmp_path / "outside.png").write_bytes((folder / "translate-disc.png").read_bytes())
    return folder


def drag(row: dict, **changes) -> dict:
    return {**row, "drags": [{**row["drags"][0], **changes}]}


# (item id, how the good translate row is broken, the field the error must name)
BROKEN = [
    (None, lambda r: r, "item_id"),
    (".", lambda r: r, "item_id"),
    ("..", lambda r: r, "item_id"),
    ("bomb", lambda r: {**r, "image_uri": "bomb.png"}, "image_uri: image has 400,000,000 pixels"),
    ("huge", lambda r: {**r, "image_uri": "huge.png"}, "image_uri: image is 12000x12000"),
    ("size", lambda r: {**r, "params": json.dumps({"size": 100000})}, "params: invalid config: size: Input should be less than or equal to 2048"),
    ("rotate-no-center", lambda r: drag(r, type="rotate"), "drags[0].center: required"),
    ("translate-center", lambda r: drag(r, center={"x": 5.0, "y": 5.0}), "drags[0].center: only allowed"),
    ("nan", lambda r: drag(r, handle={"x": float("nan"), "y": 3.0}), "drags[0].handle: "),
    ("outside-image", lambda r: drag(r, target={"x": 500.0, "y": 3.0}), "drags[0].target: [500.0, 3.0] lies outside"),
    ("abs-path", lambda r: {**r, "image_uri": "/etc/hostname"}, "image_uri: '/etc/hostname' is outside"),
    ("abs-missing", lambda r: {**r, "image_uri": "/etc/no-such-file"}, "image_uri: '/etc/no-such-file' is outside"),
    ("file-uri", lambda r: {**r, "image_uri": "file:///etc/hostname"}, "image_uri: 'file:///etc/hostname' is outside"),
    ("other-bucket", lambda r: {**r, "image_uri": "s3://another-bucket/x.png"}, "image_uri: 's3://another-bucket"),
    ("http", lambda r: {**r, "image_uri": "http://127.0.0.1:9/x.png"}, "image_uri: 'http://127.0.0.1:9/x.png' is"),
    ("escape", lambda r: {**r, "image_uri": "../outside.png"}, "image_uri: '../outside.png' is outside"),
    ("mask-escape", lambda r: drag(r, handle_mask_uri="../outside.png"), "drags[0].handle_mask_uri: '../outside"),
]


def broken_manifest(job) -> str:
    good = read_table(str(SYNTHETIC)).to_pylist()
    rows = good + [{**make(good[0]), "item_id": item_id} for item_id, make, _ in BROKEN]
    return write_rows(rows, job / "manifest.parquet")


def test_every_malformed_row_is_invalid_before_any_worker_sees_it(job, tmp_path, tiny_model_dir, capsys):
    manifest, out = broken_manifest(job), tmp_path / "out"
    assert main(["-q", "run", manifest, "--output", str(out), "--model", str(tiny_model_dir), *SETS]) == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and f"{len(BROKEN)} invalid, 3 succeeded" in printed.out
    rows = read_results(str(out / "results.parquet"))
    assert len(rows) == 3 + len(BROKEN)  # one row per manifest row, the id-less one too
    for (item_id, _, expected), row in zip(BROKEN, rows[3:], strict=True):
        assert row["status"] == "invalid" and row["attempts"] == 0, row
        assert expected in row["error"], (expected, row["error"])
        assert row["item_id"] == (item_id or "<row 3>")
    assert all(r["status"] == "succeeded" for r in rows[:3])
    assert sorted(p.name for p in (out / "rows").iterdir()) == sorted(f"{r['item_id']}.json" for r in rows[:3])
    assert not (out.parent / "artefacts").exists() and not (out / "items" / "..").resolve().joinpath("edited.png").exists()
    # a refusal says nothing about whether the file exists
    refusals = {r["item_id"]: r["error"] for r in rows if r["item_id"] in ("abs-path", "abs-missing")}
    assert refusals["abs-path"].replace("hostname", "X").replace("abs-path", "Y") == \
        refusals["abs-missing"].replace("no-such-file", "X").replace("abs-missing", "Y")


def test_manifest_validate_lists_every_bad_row_without_a_traceback(job, capsys):
    manifest = broken_manifest(job)
    assert main(["manifest", "validate", manifest]) == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    assert f"{3 + len(BROKEN)} rows, {len(BROKEN)} invalid" in printed.out
    for item_id, _, expected in BROKEN:
        assert f"(item '{item_id}'): {expected}" in printed.out, item_id


def test_a_file_that_is_not_parquet_gets_one_clear_line(tmp_path, tiny_model_dir, capsys):
    fake = tmp_path / "manifest.parquet"
    fake.write_text("item_id,image_uri\na,a.png\n")
    assert main(["manifest", "validate", str(fake)]) == 2
    assert main(["-q", "run", str(fake), "--output", str(tmp_path / "o"), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"dragnext: error: {fake}: not a Parquet file") == 2 and "Traceback" not in err


def test_an_allowed_prefix_lets_a_run_read_images_from_elsewhere(job, tmp_path, tiny_model_dir, capsys):
    good = read_table(str(SYNTHETIC)).to_pylist()[0]
    elsewhere = tmp_path / "library"
    elsewhere.mkdir()
    shutil.copy(job / good["image_uri"], elsewhere / "disc.png")
    manifest = write_rows([{**good, "image_uri": str(elsewhere / "disc.png")}], job / "m.parquet")
    common = ["-q", "run", manifest, "--model", str(tiny_model_dir), *SETS]
    assert main([*common, "--output", str(tmp_path / "refused")]) == 1
    assert main([*common, "--output", str(tmp_path / "allowed"), "--allow-prefix", str(elsewhere)]) == 0
    assert "1 invalid" in capsys.readouterr().out
