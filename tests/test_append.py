"""Appends change only what they append: every other row as stored (bytes that are not
UTF-8, fields the schema does not know, the file's metadata), and every append that reports
success lands, from several processes at once."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dragnext.config import EditConfig
from dragnext.instruction import Drag, EditItem, Instruction
from manifests import lock
from manifests.append import lock_uri, locked
from manifests.schema import MANIFEST, read_table
from studio.author import ManifestWriter
from tests.conftest import disc

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def authored(item_id: str) -> EditItem:
    image = np.full((64, 96, 3), 120, np.uint8)
    mask = disc(64, 96, 30, 30, 8)
    image[mask] = (200, 40, 40)
    drag = Drag(type="translate", handle_mask=mask, handle=(30.0, 30.0), target=(50.0, 34.0))
    return EditItem(Image.fromarray(image), Instruction(drags=(drag,)), item_id)


def users_manifest(path) -> pa.Table:
    """A manifest as another tool wrote it: a prompt of bytes that are not UTF-8 (the row is
    invalid, and must stay so), a drag field and a column this schema does not know, and
    metadata of its own."""
    drag_type = pa.struct([*MANIFEST.field("drags").type.value_type, pa.field("weight", pa.float64())])
    schema = pa.schema([pa.field("item_id", pa.string()), pa.field("image_uri", pa.string()),
                        pa.field("prompt", pa.binary()), pa.field("drags", pa.list_(drag_type)),
                        pa.field("batch", pa.string())],
                       metadata={b"dragnext.schema_version": b"1", b"owner": b"catalogue-team"})
    drag = {"type": "translate", "handle_mask_uri": "m.png", "handle": {"x": 1.0, "y": 1.0},
            "target": {"x": 2.0, "y": 2.0}, "weight": 0.5}
    table = pa.Table.from_pylist([
        {"item_id": "theirs-1", "image_uri": "a.png", "prompt": b"caf\xe9", "drags": [drag], "batch": "b1"},
        {"item_id": "theirs-2", "image_uri": "b.png", "prompt": b"ok", "drags": [drag], "batch": "b2"},
    ], schema=schema)
    pq.write_table(table, path)
    return table


def test_an_append_leaves_every_other_row_and_the_file_s_metadata_as_stored(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    before = users_manifest(manifest)
    rows, _ = ManifestWriter().append(str(manifest), authored("mine"), None, EditConfig())
    assert rows == 3
    after = read_table(str(manifest))
    assert after.slice(0, 2).select(before.column_names).equals(before)  # bytes, fields, values
    assert after.schema.metadata[b"owner"] == b"catalogue-team"
    assert after.column("prompt").type == pa.binary() and after.column("prompt")[0].as_py() == b"caf\xe9"
    assert after.column("drags")[0].as_py()[0]["weight"] == 0.5
    mine = after.slice(2).to_pylist()[0]
    assert mine["item_id"] == "mine" and mine["drags"][0]["handle_mask_uri"].startswith("masks/")
    assert mine["batch"] is None and mine["drags"][0]["weight"] is None
    assert not (tmp_path / "manifest.parquet.lock").exists()  # released


def test_an_append_waits_for_another_writer_s_lock_and_takes_over_a_dead_one(tmp_path):
    manifest = str(tmp_path / "manifest.parquet")
    held = lock.mine("studio-elsewhere")
    (tmp_path / "manifest.parquet.lock").write_bytes(held)
    started = time.monotonic()
    try:
        with locked(manifest, "studio-here", wait_s=1.0):
            raise AssertionError("a live writer's lock was not waited for")
    except RuntimeError as error:
        assert "is being appended to by run studio-elsewhere" in str(error)
    assert time.monotonic() - started >= 1.0
    # the same writer, dead: its pid is gone on this host
    stale = held.replace(str(__import__("os").getpid()).encode(), b"999999")
    (tmp_path / "manifest.parquet.lock").write_bytes(stale)
    with locked(manifest, "studio-here") as table:
        assert table.num_rows == 0 and lock.holder(lock_uri(manifest)).run_id == "studio-here"


APPENDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.test_append import authored
    from studio.author import ManifestWriter
    from dragnext.config import EditConfig
    writer = ManifestWriter()
    for k in range(8):
        writer.append({manifest!r}, authored(f"{{sys.argv[1]}}-{{k}}"), None, EditConfig())
        print("appended", flush=True)
""")


@pytest.mark.integration
def test_two_processes_appending_8_rows_each_end_with_all_16_and_the_old_rows_unchanged(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    before = users_manifest(manifest)
    script = APPENDER.format(root=str(ROOT), manifest=str(manifest))
    writers = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE, text=True)
               for name in ("a", "b")]
    outputs = [w.communicate(timeout=600)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    assert [o.count("appended") for o in outputs] == [8, 8]  # every one reported success
    after = read_table(str(manifest))
    assert after.num_rows == 2 + 16
    appended_ids = sorted(after.column("item_id").to_pylist()[2:])
    assert appended_ids == sorted(f"{n}-{k}" for n in "ab" for k in range(8))
    assert after.slice(0, 2).select(before.column_names).equals(before)


def test_appends_from_threads_of_one_studio_all_land(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    manifest, writer = str(tmp_path / "manifest.parquet"), ManifestWriter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: writer.append(manifest, authored(f"t-{k}"), None, EditConfig()), range(8)))
    assert sorted(read_table(manifest).column("item_id").to_pylist()) == sorted(f"t-{k}" for k in range(8))
