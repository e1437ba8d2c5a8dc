"""The studio's functions without a browser: regions and the instruction they make, the
instant preview, Edit now, manifest appends (local and S3), results paging at 10 000 rows,
sending items back, and box segmentation (GrabCut, and SAM from a local folder). The real
browser drives the same API in tests/test_studio_browser.py."""

import json
import time

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from command.main import main
from dragnext.config import ConfigError
from dragnext.inline_mask import InlineMask, decode, encode
from dragnext.instruction import Drag, EditItem, Instruction, InvalidItemError, validate_item
from flows.results import write_summary
from flows.selection import SelectionError, read_selection
from manifests.items import with_params
from manifests.schema import MANIFEST, RESULTS, read_table, write_table
from manifests.storage import parent
from manifests.uris import UriPolicy
from studio.app import StudioSettings, create_app
from studio.author import instant_preview, warp_image
from studio.review import Query, Results, send_back
from studio.roots import Roots
from studio.segment import Segmenter, grabcut
from studio.state import AuthorState, DragState, Region, Stroke, instruction_of
from tests.conftest import FAST_OVERRIDES, disc


def scene_image(height=96, width=128) -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(0)
    pixels = (rng.random((height, width, 3)) * 40 + 100).astype(np.uint8)
    mask = disc(height, width, 40, 40, 12)
    pixels[mask] = (220, 40, 40)
    return Image.fromarray(pixels), mask


def state_for(image_id: str, **changes) -> AuthorState:
    square = [[28.0, 28.0], [52.0, 28.0], [52.0, 52.0], [28.0, 52.0]]
    drag = DragState(type="translate", region=Region(polygons=[square]), handle=(40, 40), target=(70, 44))
    return AuthorState(image_id=image_id, item_id="authored", drags=[drag]).model_copy(update=changes)


def test_a_region_is_the_union_of_its_polygons_strokes_and_rle_as_the_library_decodes_them():
    size = (64, 48)
    polygon = [[5.0, 5.0], [20.0, 5.0], [20.0, 18.0], [5.0, 18.0]]
    flat = [c for xy in polygon for c in xy]
    assert np.array_equal(Region(polygons=[polygon]).mask(size), decode(InlineMask(polygons=[flat]), size))
    dot = Region(strokes=[Stroke(points=[(40, 30)], radius=3)]).mask(size)
    assert dot[30, 40] and dot[30, 43] and not dot[30, 44] and 25 <= dot.sum() <= 37  # a disc of radius 3
    blob = np.zeros((48, 64), bool)
    blob[30:40, 2:9] = True
    rle = Region(rle=encode(blob).rle).mask(size)
    assert np.array_equal(rle, blob)
    union = Region(polygons=[polygon], strokes=[Stroke(points=[(40, 30)], radius=3)], rle=encode(blob).rle)
    assert np.array_equal(union.mask(size), Region(polygons=[polygon]).mask(size) | dot | blob)


def test_findings_name_each_drag_in_the_words_of_manifest_validate_and_the_preview_keeps_the_good_ones():
    image, _ = scene_image()
    good = state_for("0" * 64).drags[0]
    no_centre = DragState(type="rotate", region=good.region, handle=(40, 40), target=(50, 50))
    empty = DragState(type="translate", handle=(40, 40), target=(45, 40))
    unfinished = DragState(type="translate", region=good.region, handle=(40, 40))
    outside = DragState(type="translate", region=good.region, handle=(40, 40), target=(200, 40))
    state = state_for("0" * 64, drags=[good, no_centre, empty, unfinished, outside])
    item, found, shown = instruction_of(state, image)
    by_drag = {f.drag: f for f in found if f.level == "error"}
    assert set(by_drag) == {1, 2, 3, 4}  # every broken drag, not only the first
    assert (by_drag[2].field, by_drag[2].message) == ("drags[2].handle_mask", "mask is empty")
    assert (by_drag[3].field, by_drag[3].message) == ("drags[3].target", "Field required")
    assert by_drag[4].field == "drags[4].target" and "lies outside the 128x96 image" in by_drag[4].message
    # the same words as the library's validation of the same drag
    lone = EditItem(image, Instruction(drags=(Drag("rotate", item.instruction.drags[1].handle_mask, (40, 40),
                                                   (50, 50)),)))
    with pytest.raises(InvalidItemError) as raised:
        validate_item(lone)
    assert (by_drag[1].field, by_drag[1].message) == ("drags[1].center", raised.value.reason)
    assert len(shown.instruction.drags) == 1 and shown.instruction.drags[0].target == (70, 44)


def test_the_drag_warnings_sit_next_to_their_drag():
    image, _ = scene_image()
    drag = state_for("0" * 64).drags[0]
    noop = drag.model_copy(update={"target": drag.handle})
    _, found, _ = instruction_of(state_for("0" * 64, drags=[drag, noop]), image)
    assert [(f.drag, f.level) for f in found] == [(1, "warning")]
    assert "handle equals target" in found[0].message


def test_the_instant_preview_warps_pixels_and_keeps_up_with_the_mouse_at_512_px():
    image, mask = scene_image()
    item, _, shown = instruction_of(state_for("0" * 64), image)
    warped = np.asarray(warp_image(shown))
    moved = np.roll(np.roll(mask, 30, axis=1), 4, axis=0)  # the disc's pixels at handle → target
    core = moved & np.roll(np.roll(moved, 2, 0), 2, 1) & np.roll(np.roll(moved, -2, 0), -2, 1)
    assert (np.abs(warped[core].astype(int) - (220, 40, 40)).max(axis=1) < 30).mean() > 0.95

    big = image.resize((512, 384), Image.Resampling.NEAREST)
    scaled = [[x * 4, y * 4] for x, y in state_for("0" * 64).drags[0].region.polygons[0]]
    region = Region(polygons=[scaled])
    drags = [DragState(type="translate", region=region, handle=(160, 160), target=(280, 176)),
             DragState(type="rotate", region=region, handle=(200, 160), target=(160, 200), center=(160, 160))]
    _, found, shown = instruction_of(state_for("0" * 64, drags=drags), big)
    assert not [f for f in found if f.level == "error"]
    started = time.perf_counter()
    drawn, warped, seconds = instant_preview(shown)
    assert time.perf_counter() - started < 1.0 and drawn.size == warped.size == (512, 384)


STUDIO_URL = "http://127.0.0.1:7860"  # the Host and Origin the studio's own page sends


def studio_client(settings: StudioSettings) -> TestClient:
    return TestClient(create_app(settings), base_url=STUDIO_URL, headers={"Origin": STUDIO_URL})


@pytest.fixture
def studio(tmp_path, tiny_model_dir, s3_bucket):
    roots = Roots.of(allow_prefixes=[str(tmp_path), s3_bucket], write_prefixes=[str(tmp_path), s3_bucket])
    settings = StudioSettings(model=str(tiny_model_dir), overrides=FAST_OVERRIDES, workdir=tmp_path / "work",
                              sam=None, roots=roots)
    with studio_client(settings) as client:
        yield client


def upload(client, image: Image.Image) -> str:
    import base64

    from studio.author import png

    answer = client.post("/api/images", json={"data": base64.b64encode(png(image)).decode(), "name": "x.png"})
    assert answer.status_code == 200, answer.text
    return answer.json()["image_id"]


def wait_job(client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_edit_now_runs_every_stage_off_the_request_and_returns_the_sheet_and_record(studio):
    image, _ = scene_image()
    state = state_for(upload(studio, image))
    started = time.perf_counter()
    job = studio.post("/api/edit", json={"state": state.model_dump()}).json()
    assert time.perf_counter() - started < 2 and job["status"] in ("queued", "loading model", "running")
    done = wait_job(studio, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["stages_done"] == done["stages"]  # the fast config's LoRA stage runs too
    assert done["record"]["item"]["item_id"] == "authored" and done["record"]["unet_passes"]
    sheet = studio.get(f"/api/jobs/{job['id']}/sheet.png")
    assert sheet.headers["content-type"] == "image/png" and len(sheet.content) > 1000
    bad = studio.post("/api/edit", json={"state": state_for(state.image_id, drags=[]).model_dump()})
    assert bad.status_code == 400 and "at least one drag is required" in bad.json()["error"]


def test_add_to_manifest_writes_its_files_beside_it_and_it_validates_clean(studio, tmp_path, capsys):
    image, _ = scene_image()
    state = state_for(upload(studio, image))
    manifest = str(tmp_path / "authored" / "manifest.parquet")
    first = studio.post("/api/manifest/append", json={"state": state.model_dump(), "manifest": manifest})
    assert first.status_code == 200 and first.json() == {"manifest": manifest, "rows": 1, "problems": []}
    own = read_table(manifest)  # a column of the user's own survives appends
    write_table(own.append_column("batch", pa.array(["b1"])).replace_schema_metadata(own.schema.metadata),
                manifest)
    second = state.model_copy(update={"item_id": "authored-2"}).model_dump()
    assert studio.post("/api/manifest/append", json={"state": second, "manifest": manifest,
                                                     "params": {"seed": 3}}).json()["rows"] == 2
    again = studio.post("/api/manifest/append", json={"state": second, "manifest": manifest})
    assert again.status_code == 400 and "item_id: the manifest" in again.json()["error"]
    bad = studio.post("/api/manifest/append", json={"state": {**second, "item_id": "x"}, "manifest": manifest,
                                                    "params": {"no.such.key": 1}})
    assert bad.status_code == 400 and "invalid config" in bad.json()["error"]
    table = read_table(manifest)
    assert table.schema.names == MANIFEST.names + ["batch"] and table.num_rows == 2
    assert table.column("batch").to_pylist() == ["b1", None]
    rows = table.to_pylist()
    assert rows[1]["params"] == '{"seed": 3}' and rows[0]["drags"][0]["handle_mask_uri"].startswith("masks/")
    assert main(["manifest", "validate", manifest]) == 0
    assert "2 rows, 0 invalid" in capsys.readouterr().out
    # the row opens again in Author as it was drawn
    opened = studio.post("/api/manifest/open", json={"manifest": manifest, "item_id": "authored"}).json()
    reopened = AuthorState.model_validate(opened["state"])
    assert reopened.image_id == state.image_id and reopened.drags[0].target == (70, 44)
    assert np.array_equal(reopened.drags[0].region.mask(image.size), state.drags[0].region.mask(image.size))


def test_add_to_a_manifest_on_s3(studio, s3_bucket):
    image, _ = scene_image()
    state = state_for(upload(studio, image))
    manifest = f"{s3_bucket}/studio/manifest.parquet"
    answer = studio.post("/api/manifest/append", json={"state": state.model_dump(), "manifest": manifest})
    assert answer.status_code == 200 and answer.json()["problems"] == []
    assert read_table(manifest).num_rows == 1


def results_file(folder, n: int) -> str:
    rng = np.random.default_rng(1)
    statuses = rng.choice(["succeeded", "failed", "invalid"], size=n, p=[0.8, 0.15, 0.05])
    rows = []
    for i, status in enumerate(statuses):
        ok = status == "succeeded"
        rows.append({
            "item_id": f"item-{i:05d}", "status": str(status), "error": None if ok else "boom",
            "image_uri": None, "preview_uri": None, "record_uri": None,
            "metrics": {"IF_ed": float(rng.random()), "drag_gap": float(rng.normal())} if ok else None,
            "timings_s": None, "attempts": 1 + (i % 3), "config_hash": None, "device": "cpu",
            "input_digest": None, "needs_review": bool(ok and i % 7 == 0) if ok else None,
            "review_reasons": "IF_ed below 0.92" if ok and i % 7 == 0 else None,
            "drags": [{"type": ("translate", "deform", "rotate", "scale")[i % 4]}]})
    schema = RESULTS.append(pa.field("drags", pa.list_(pa.struct([pa.field("type", pa.string())]))))
    uri = str(folder / "results.parquet")
    write_table(pa.Table.from_pylist(rows, schema=schema), uri)
    write_summary(str(folder), {"config": {}, "run_id": "r"})
    return uri


def test_review_pages_10000_rows_filtered_and_sorted_without_reading_them_all(tmp_path):
    uri = results_file(tmp_path, 10_000)
    started = time.perf_counter()
    results = Results(uri, UriPolicy(parent(uri)))
    facets = results.facets()
    assert facets["rows"] == 10_000 and sum(facets["statuses"].values()) == 10_000
    assert facets["drag_types"] == ["deform", "rotate", "scale", "translate"]
    failed = results.query(Query(status=["failed"], per_page=50))
    assert failed["total"] == facets["statuses"]["failed"] and len(failed["rows"]) == 50
    assert all(r["status"] == "failed" for r in failed["rows"])
    flagged = results.query(Query(needs_review=True, sort="IF_ed", descending=True, per_page=200))
    assert flagged["total"] == facets["needs_review"]
    values = [r["metrics"]["IF_ed"] for r in flagged["rows"]]
    assert values == sorted(values, reverse=True) and all(r["needs_review"] for r in flagged["rows"])
    ranged = results.query(Query(metric="IF_ed", min=0.25, max=0.5, drag_type="rotate", page=1, per_page=20))
    assert all(0.25 <= r["metrics"]["IF_ed"] <= 0.5 and r["drag_types"] == ["rotate"] for r in ranged["rows"])
    last = results.query(Query(page=(10_000 - 1) // 24, per_page=24))
    assert last["rows"][-1]["item_id"] == "item-09999" and len(last["rows"]) == 10_000 % 24
    assert time.perf_counter() - started < 5  # open, facets and five queries


def test_results_without_drag_types_take_them_from_the_run_s_manifest_where_the_roots_allow(tmp_path):
    """What the pipeline writes: results.parquet carries no drags, summary.json names the manifest."""
    from manifests.examples import DEMO_MANIFEST

    table = read_table(results_file(tmp_path, 8)).drop_columns(["drags"])
    ids = read_table(str(DEMO_MANIFEST)).column("item_id").to_pylist()
    write_table(table.set_column(0, "item_id", [ids]), str(tmp_path / "results.parquet"))
    write_summary(str(tmp_path), {"config": {}, "run_id": "r", "manifest_uri": str(DEMO_MANIFEST)})
    uri = str(tmp_path / "results.parquet")

    reading = Results(uri, UriPolicy(parent(uri), (str(DEMO_MANIFEST.parent),)))
    allowed = reading.facets()
    assert allowed["drag_types"] == ["deform", "rotate", "scale", "translate"]
    assert not allowed["drag_types_note"]
    rotated = reading.query(Query(drag_type="rotate"))
    assert sorted(r["item_id"] for r in rotated["rows"]) == ["rotate-0100", "rotate-0101"]

    outside = Results(uri, UriPolicy(parent(uri))).facets()  # the manifest is not under the roots: not read
    assert outside["drag_types"] == [] and "outside the studio's read prefixes" in outside["drag_types_note"]
    write_summary(str(tmp_path), {"config": {}, "run_id": "r", "manifest_uri": ["not", "a", "uri"]})
    assert "names no manifest" in Results(uri, UriPolicy(parent(uri))).facets()["drag_types_note"]


@pytest.mark.parametrize("bad", ["fifo", "ints", "list ids", "not parquet", "fifo summary"])
def test_a_hostile_manifest_or_summary_leaves_the_drag_types_empty_with_a_note_and_never_hangs(tmp_path, bad):
    import os

    table = read_table(results_file(tmp_path, 4)).drop_columns(["drags"])
    write_table(table, str(tmp_path / "results.parquet"))
    manifest = tmp_path / "manifest.parquet"
    if bad == "fifo":
        os.mkfifo(manifest)  # reading it would block for ever
    elif bad == "ints":
        pa_table = pa.table({"item_id": ["item-00000"], "drags": [7]})
        write_table(pa_table, str(manifest))
    elif bad == "list ids":
        write_table(pa.table({"item_id": [["a"]], "drags": [[{"type": "rotate"}]]}), str(manifest))
    else:
        manifest.write_bytes(b"not a parquet file")
    write_summary(str(tmp_path), {"config": {}, "run_id": "r", "manifest_uri": str(manifest)})
    if bad == "fifo summary":
        (tmp_path / "summary.json").unlink()
        os.mkfifo(tmp_path / "summary.json")
    facets = Results(str(tmp_path / "results.parquet"), UriPolicy(str(tmp_path))).facets()
    assert facets["rows"] == 4 and facets["drag_types"] == []
    if bad != "ints":  # drags that are no list just carry no types
        assert facets["drag_types_note"].startswith("drag types: the run's")


def test_send_back_writes_a_selection_that_retry_reads_and_refuses_bad_ones(tmp_path):
    uri = results_file(tmp_path, 20)
    results = Results(uri, UriPolicy(parent(uri)))
    answer = send_back(results, ["item-00001", "item-00002"], {"seed": 7})
    selection = read_selection(answer["selection_uri"], uri)
    assert selection.items == ["item-00001", "item-00002"] and selection.overrides == {"seed": 7}
    assert answer["command"] == f"dragnext retry {uri} --selection {answer['selection_uri']}"
    with pytest.raises(KeyError, match="item-99999"):
        send_back(results, ["item-99999"], {})
    with pytest.raises(ConfigError):
        send_back(results, ["item-00001"], {"pbsi.no_such_key": 1})
    with pytest.raises(SelectionError, match="not of"):
        read_selection(answer["selection_uri"], str(tmp_path / "other" / "results.parquet"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"results_uri": "x", "items": []}')
    with pytest.raises(SelectionError, match="items"):
        read_selection(str(broken), "x")


def test_a_selection_s_overrides_go_over_the_row_s_own_params():
    row = {"item_id": "a", "params": '{"seed": 1, "pbsi.steps": 4}'}
    assert json.loads(with_params(row, {"seed": 9})["params"]) == {"seed": 9, "pbsi.steps": 4}
    assert with_params({"item_id": "b", "params": None}, {"seed": 2})["params"] == '{"seed": 2}'
    assert with_params({"item_id": "c", "params": "[1]"}, {"seed": 2})["params"] == "[1]"  # validation says
    assert with_params(row, {}) is row


def test_grabcut_finds_the_object_in_a_box():
    image, mask = scene_image()
    found = grabcut(image, (24, 24, 57, 57))
    iou = (found & mask).sum() / (found | mask).sum()
    assert iou > 0.85
    assert Segmenter("no-such/sam-model").method == "grabcut"  # nothing in the cache: never a download


def tiny_sam(folder) -> str:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 64,
              "output_channels": 32, "image_size": 256, "patch_size": 16, "window_size": 4,
              "global_attn_indexes": [1], "num_pos_feats": 16}
    config = SamConfig(vision_config=vision,
                       prompt_encoder_config={"hidden_size": 32, "image_size": 256, "patch_size": 16},
                       mask_decoder_config={"hidden_size": 32, "num_hidden_layers": 2, "mlp_dim": 64,
                                            "num_attention_heads": 2, "iou_head_hidden_dim": 32})
    SamModel(config).save_pretrained(folder)
    processor = SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    SamProcessor(image_processor=processor).save_pretrained(folder)
    return str(folder)


def test_sam_is_used_when_its_weights_are_local(tmp_path):
    image, _ = scene_image()
    segmenter = Segmenter(tiny_sam(tmp_path / "sam"))
    assert segmenter.method == "sam"
    mask = segmenter(image, (24, 24, 57, 57))
    assert mask.shape == (96, 128) and mask.dtype == bool  # random weights: the shape, not the quality


def test_the_api_answers_bad_input_with_the_field_never_a_traceback(studio, tmp_path):
    assert studio.post("/api/images", json={"data": "not base64!"}).status_code == 400
    answer = studio.post("/api/images", json={"data": "aGVsbG8="})  # "hello": not an image
    assert answer.status_code == 400 and "not a readable image" in answer.json()["error"]
    missing = studio.post("/api/author/check", json=state_for("f" * 64).model_dump())
    assert missing.status_code == 400
    image_id = upload(studio, scene_image()[0])
    bad_box = studio.post("/api/segment", json={"image_id": image_id, "box": [5, 5, 6, 6]})
    assert bad_box.status_code == 400 and "smaller than 3x3" in bad_box.json()["error"]
    nothing = studio.get("/api/results/facets", params={"results_uri": str(tmp_path / "no/results.parquet")})
    assert nothing.status_code == 400 and "Errno" not in nothing.json()["error"]


def test_review_reads_a_run_on_s3_and_serves_only_its_items_files(studio, s3_bucket, tmp_path):
    from manifests.storage import write_bytes
    from studio.author import png

    uri = results_file(tmp_path, 3)
    table = read_table(uri)
    preview = f"{s3_bucket}/run/items/item-00000/preview.png"
    write_bytes(preview, png(scene_image()[0]))
    previews = [preview, None, None]
    table = table.set_column(table.schema.get_field_index("preview_uri"), "preview_uri",
                             pa.array(previews, pa.string()))
    remote = f"{s3_bucket}/run/results.parquet"
    write_table(table, remote)
    write_summary(f"{s3_bucket}/run", {"config": {}, "run_id": "r"})
    facets = studio.get("/api/results/facets", params={"results_uri": remote}).json()
    assert facets["rows"] == 3
    page = studio.post("/api/results/query", json={"results": remote, "query": {"per_page": 2}}).json()
    assert [r["item_id"] for r in page["rows"]] == ["item-00000", "item-00001"] and page["total"] == 3
    assert page["rows"][0]["has"]["preview_uri"] and not page["rows"][1]["has"]["preview_uri"]
    got = studio.get("/api/results/file", params={"results_uri": remote, "item_id": "item-00000",
                                                  "kind": "preview_uri"})
    assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
    assert studio.get("/api/results/file", params={"results_uri": remote, "item_id": "item-00001",
                                                   "kind": "preview_uri"}).status_code == 404
    # a kind that is not one of the item's own output files is refused, never read as a path
    assert studio.get("/api/results/file", params={"results_uri": remote, "item_id": "item-00000",
                                                   "kind": "manifest_uri"}).status_code == 400
    sent = studio.post("/api/results/send-back", json={"results": remote, "items": ["item-00002"]}).json()
    assert sent["selection_uri"].startswith(f"{s3_bucket}/run/retries/selection-")
    launch = studio.post("/api/results/send-back", json={"results": remote, "items": ["item-00002"],
                                                         "launch": "deployment"})
    assert launch.status_code == 400 and "no Prefect server is configured" in launch.json()["error"]


def test_the_studio_command_refuses_a_missing_model_or_a_bad_key_before_it_serves(tmp_path, capsys):
    assert main(["studio", "--model", str(tmp_path / "nothing"), "--port", "1"]) == 2
    assert "could not be loaded" in capsys.readouterr().err
    assert main(["studio", "--set", "pbsi.nope=1", "--port", "1"]) == 2
    assert "pbsi.nope" in capsys.readouterr().err


@pytest.mark.integration  # a real S3 server (moto) behind a proxy taken down: over a minute
def test_a_store_that_is_down_answers_503_with_the_reason_and_the_studio_keeps_serving(
        studio, s3_store, tmp_path, monkeypatch):
    bucket, proxy, _ = s3_store
    monkeypatch.setenv("DRAGNEXT_STORE_RETRIES", "1")
    monkeypatch.setenv("DRAGNEXT_STORE_BACKOFF_S", "0.05")
    # botocore's own retries of a refused connection take tens of seconds on a busy machine:
    # the store's reason, not the studio's own deadline, is what this test reads
    monkeypatch.setattr("studio.app.STORE_TIMEOUT_S", 600.0)
    remote = f"{bucket}/down/results.parquet"
    write_table(read_table(results_file(tmp_path, 2)), remote)
    proxy.down()
    try:
        answer = studio.get("/api/results/facets", params={"results_uri": remote})
    finally:
        proxy.up()
    assert answer.status_code == 503 and "unreachable" in answer.json()["error"]
    assert studio.get("/api/results/facets", params={"results_uri": remote}).json()["rows"] == 2


def test_the_preview_timing_benchmark_runs_every_drag_kind_and_reports_against_its_bound():
    from bench.instant_preview import BOUND_S, table, time_one

    rows = [time_one(128, n, repeat=1) for n in (1, 3)]  # it asserts no drag has an error
    assert all(r["median_s"] < BOUND_S for r in rows)
    assert "| 128² | 3 |" in table({"rows": rows}) and "NO" not in table({"rows": rows})
