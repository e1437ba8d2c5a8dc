"""The batch pipeline end to end through Prefect, on S3 (moto's server) and a local folder."""

import io
import json
import logging
import re
import urllib.request
from pathlib import Path
from uuid import UUID

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from command.main import main
from dragnext.edit import STAGES
from dragnext.inline_mask import encode
from flows.bulk_edit import bulk_edit, retry_failed
from flows.shard import ItemsFailed
from manifests.dragbench import import_dragbench
from manifests.schema import ManifestError, read_table, write_table
from manifests.storage import filesystem, read_bytes, write_bytes
from tests.conftest import FAST, FAST_OVERRIDES, wait_for
from tests.scenes import SYNTHETIC, dragbench_subset

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def open_image(uri: str) -> Image.Image:
    image = Image.open(io.BytesIO(read_bytes(uri)))
    image.load()
    return image


def test_a_dragbench_manifest_with_invalid_rows_runs_on_s3(tmp_path, s3_bucket, tiny_model_dir):
    root = dragbench_subset(tmp_path, ["animals", "building_countryside_view", "human_full_body",
                                       "other_objects"])
    manifest = f"{s3_bucket}/bench/manifest.parquet"
    import_dragbench(root, manifest)
    table = read_table(manifest)
    rows = table.to_pylist()
    small = io.BytesIO()
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(small, "PNG")
    write_bytes(f"{s3_bucket}/bench/masks/small.png", small.getvalue())
    first = rows[0]

    def inline(uri):  # the PNG mask as COCO RLE in the row
        return encode(np.asarray(open_image(f"{s3_bucket}/bench/{uri}")) != 0).model_dump()

    rows += [{**first, "item_id": "missing-image", "image_uri": "images/nowhere.png"},
             {**first, "item_id": "wrong-size-mask", "editable_mask_uri": "masks/small.png"},
             {**first, "item_id": "inline-masks", "editable_mask_uri": None,
              "editable_mask": inline(first["editable_mask_uri"]),
              "drags": [{**d, "handle_mask_uri": None, "handle_mask": inline(d["handle_mask_uri"])}
                        for d in first["drags"]]}]
    inputs = {r["item_id"]: r["image_uri"] for r in rows}
    table = pa.Table.from_pylist(rows, schema=table.schema)
    write_table(table.append_column("batch", pa.array(["b1"] * len(rows))), manifest)

    summary = bulk_edit(manifest, f"{s3_bucket}/out", model=str(tiny_model_dir),
                        overrides=FAST_OVERRIDES, retry_delay_s=0.1)

    results = {r["item_id"]: r for r in read_table(f"{s3_bucket}/out/results.parquet").to_pylist()}
    assert len(results) == 7 and summary["counts"] == {"succeeded": 5, "invalid": 2}
    missing = results["missing-image"]["error"]
    assert "image_uri" in missing and "nowhere.png" in missing
    assert "editable_mask_uri: mask is 10x10" in results["wrong-size-mask"]["error"]
    for row in results.values():
        assert row["batch"] == "b1"  # unknown manifest columns pass through
        if row["status"] != "succeeded":
            continue
        original = open_image(f"{s3_bucket}/bench/{inputs[row['item_id']]}")
        assert open_image(row["image_uri"]).size == original.size
        assert open_image(row["preview_uri"]).height == original.height  # over 256 px: not enlarged
        record = json.loads(read_bytes(row["record_uri"]))
        assert set(record["timings_s"]) == set(STAGES)
        assert record["metrics"]["if_th_ssim"] is not None and row["metrics"]
        assert record["metrics"]["target_err"] == dict(row["metrics"])["target_err"] >= 0  # the shape signals
    records = {i: json.loads(read_bytes(results[i]["record_uri"]))
               for i in ("inline-masks", first["item_id"])}
    assert records["inline-masks"]["item"]["drags"] == records[first["item_id"]]["item"]["drags"]  # same ϑ
    assert json.loads(read_bytes(f"{s3_bucket}/out/summary.json"))["counts"]["succeeded"] == 5
    with get_client(sync_client=True) as client:  # the previews artifact's links open, as a browser would
        [previews] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bulk-edit-previews"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(summary["run_id"])])))
    first_link = re.search(r"\| (\S+) \| \[preview\]\((http://[^)]+)\)", previews.data)
    opened = Image.open(io.BytesIO(urllib.request.urlopen(first_link[2], timeout=10).read()))
    assert opened.size == open_image(results[first_link[1]]["preview_uri"]).size
    fs, _ = filesystem(s3_bucket)
    assert any(k.endswith("stages/lora.safetensors") for k in fs.find(f"{s3_bucket}/out/items"))
    # one row object per item that reached a worker (the mask size is found when it is read)
    assert len(fs.ls(f"{s3_bucket}/out/rows")) == 6


def test_the_run_command_with_its_progress_bar_edits_in_two_worker_processes(tmp_path, tiny_model_dir,
                                                                             capsys, caplog):
    # the workers' lines reach the run's process (and, on a work pool, its logs in the UI); with
    # the bar on they stay off the console, so they are read at their logger itself
    logging.getLogger("tasks.pool.worker").addHandler(caplog.handler)
    out = tmp_path / "run"
    sets = [a for s in [*FAST, "runtime.batch_size=1"] for a in ("--set", s)]  # three batches for two workers
    flow_runs_level = logging.getLogger("prefect.flow_runs").level
    try:
        code = main(["run", str(SYNTHETIC), "--output", str(out), "--model", str(tiny_model_dir),
                     "--workers", "2", *sets])
    finally:
        logging.getLogger("tasks.pool.worker").removeHandler(caplog.handler)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # the bar quiets Prefect's run loggers while it runs, and gives them back to the caller's process
    assert logging.getLogger("prefect.flow_runs").level == flow_runs_level
    assert "3 succeeded" in captured.out  # the tiny random model's edits also need review: it draws noise
    assert "items: 100%" in captured.err and "3/3" in captured.err  # the bar ran to the end
    records = [json.loads(p.read_text()) for p in sorted(out.glob("items/*/record.json"))]
    assert len(records) == 3
    pids = {r["worker"]["pid"] for r in records}
    assert len(pids) == 2  # the items ran in two worker processes
    forwarded = [r.getMessage() for r in caplog.records if r.name == "tasks.pool.worker"]
    for pid in pids:  # each worker's own lines came back to the run's process (and so to its logs)
        assert f"[worker {pid}] tasks.worker: worker {pid} uses cpu" in forwarded, forwarded
        assert any(m.startswith(f"[worker {pid}] dragnext.model: loaded model") for m in forwarded), forwarded
    assert all(r["worker"]["models_loaded"] == 1 for r in records)  # one model per process
    for row in read_table(str(out / "results.parquet")).to_pylist():
        assert row["status"] == "succeeded" and Image.open(row["image_uri"]).size > (0, 0)


def test_transient_errors_retry_and_failed_items_resume_without_retraining(tmp_path, tiny_model_dir,
                                                                          monkeypatch):
    import dragnext.stages

    calls = {"decode": 0}
    real_pbsi, real_image = dragnext.stages.pbsi, dragnext.stages.tensor_to_image

    def pbsi_with_a_bug(trajectory, drags, *args, **kwargs):
        if any(d.type == "rotate" for item_drags in drags for d in item_drags):  # rotate-bar's batch
            raise RuntimeError("simulated bug in the optimiser")
        return real_pbsi(trajectory, drags, *args, **kwargs)

    def decode_with_a_blip(*args):
        calls["decode"] += 1
        if calls["decode"] == 1:  # translate-disc, alone in decode: rotate-bar failed before
            raise OSError("simulated network blip")
        return real_image(*args)

    monkeypatch.setattr(dragnext.stages, "pbsi", pbsi_with_a_bug)
    monkeypatch.setattr(dragnext.stages, "tensor_to_image", decode_with_a_blip)
    out = tmp_path / "run"
    with pytest.raises(ItemsFailed) as failed:
        bulk_edit(str(SYNTHETIC), str(out), model=str(tiny_model_dir), overrides=FAST_OVERRIDES,
                  item_filter=["translate-disc", "rotate-bar"], workers=0, retry_delay_s=0.1)
    summary = failed.value.summary
    assert "dragnext retry" in str(failed.value)  # the flow run ends Failed, saying how to retry
    results = {r["item_id"]: r for r in read_table(summary["results_uri"]).to_pylist()}
    assert results["translate-disc"]["status"] == "succeeded"
    assert results["translate-disc"]["attempts"] == 2
    assert results["rotate-bar"]["status"] == "failed" and results["rotate-bar"]["attempts"] == 1
    assert "simulated bug" in results["rotate-bar"]["error"]
    assert results["deform-bar-end"]["status"] == "skipped"

    lora = out / "items" / "rotate-bar" / "stages" / "lora.safetensors"
    stored, stamp = lora.read_bytes(), lora.stat().st_mtime_ns
    monkeypatch.setattr(dragnext.stages, "pbsi", real_pbsi)  # the cause is removed
    first_run = summary["run_id"]
    summary = retry_failed(summary["results_uri"], workers=0)
    assert summary["run_id"] == first_run  # the run's id is kept; the retry is added beside it
    [retry_run] = summary["retry_runs"]
    assert json.loads((out / "summary.json").read_text())["retry_runs"] == [retry_run]
    with get_client(sync_client=True) as client:  # the retry's work is its own run's, not a subflow's
        run = client.read_flow_run(UUID(retry_run))
        assert client.read_flow(run.flow_id).name == "retry-failed" and run.parent_task_run_id is None
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        assert artifacts  # the summary and tables are on the retry's page
        assert not client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        line = "running 1 shard(s) of up to 1 items in this flow run"
        runs_logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
        # logs reach the API in batches: wait for the line
        wait_for(lambda: line in [e.message for e in client.read_logs(log_filter=runs_logs)], 60,
                 "the run's shard line")
    results = {r["item_id"]: r for r in read_table(summary["results_uri"]).to_pylist()}
    assert results["rotate-bar"]["status"] == "succeeded" and results["rotate-bar"]["attempts"] == 2
    assert results["translate-disc"]["attempts"] == 2  # kept from the first run
    assert results["deform-bar-end"]["status"] == "skipped"
    assert summary["resumed"] == 1  # translate-disc is kept, not edited again
    assert lora.read_bytes() == stored and lora.stat().st_mtime_ns == stamp  # not trained again
    record = json.loads((out / "items" / "rotate-bar" / "record.json").read_text())
    assert record["reused"] == ["inversion", "lora"]  # resumed after the last finished stage
    assert set(record["unet_passes"]["by_stage"]) == {"pbsi", "denoise"}  # reused stages cost nothing


def test_the_run_command_hands_workers_batches_and_keeps_one_row_per_item(tmp_path, tiny_model_dir, capsys):
    from manifests.examples import DEMO_MANIFEST

    out = tmp_path / "out"
    # review: without the paste every edit changes M's outside a little (the VAE), so IF_ed < 1 flags them all
    review = ["output.paste_background=false", "review.min_if_ed=1.0", "review.min_drag_gap=null"]
    sets = [a for s in [*FAST, "runtime.batch_size=4", *review] for a in ("--set", s)]
    assert main(["run", str(DEMO_MANIFEST), "--output", str(out), "--model", str(tiny_model_dir),
                 "--workers", "2", *sets]) == 0  # flags are not failures
    captured = capsys.readouterr()
    assert "8/8" in captured.err and "8 succeeded" in captured.out  # the items bar counts items
    assert "8 need review" in captured.out
    results = read_table(str(out / "results.parquet")).to_pylist()
    assert len(results) == 8 and len({r["item_id"] for r in results}) == 8
    assert all(r["needs_review"] and r["review_reasons"].startswith("outside changed: IF_ed = ")
               for r in results)
    assert json.loads((out / "summary.json").read_text())["needs_review"] == 8
    records = {r["item_id"]: json.loads(Path(r["record_uri"]).read_text()) for r in results}
    batches = {tuple(rec["batch"]["items"]) for rec in records.values()}
    assert sorted(len(b) for b in batches) == [4, 4] and set(sum(batches, ())) == set(records)
    assert all(item in rec["batch"]["items"] and rec["batch"]["size"] == 4 for item, rec in records.items())
    assert all(rec["config"]["runtime"]["batch_size"] == 4 for rec in records.values())
    assert len({rec["worker"]["pid"] for rec in records.values()}) == 2  # a batch per worker
    pbsi = next(iter(records.values()))["unet_passes"]["by_stage"]["pbsi"]
    assert pbsi["forward_samples"] == 4 * pbsi["forward"]  # every UNet call took the whole batch


def test_a_manifest_that_cannot_be_read_fails_the_run_before_any_item(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.parquet"
    write_table(read_table(str(SYNTHETIC)).drop_columns(["drags"]), str(bad))
    with pytest.raises(ManifestError, match="missing column"):
        bulk_edit(str(bad), str(tmp_path / "out"), model=str(tiny_model_dir))
    assert not Path(tmp_path / "out" / "results.parquet").exists()


def test_the_demo_runs_the_shipped_benchmark_scenes_with_the_fixture_model_and_stacks_previews(tmp_path,
                                                                                                capsys):
    out = tmp_path / "demo"
    sets = [a for s in FAST for a in ("--set", s)]
    assert main(["-q", "demo", "--out", str(out), *sets]) == 0
    printed = capsys.readouterr().out
    assert "8 succeeded" in printed and "previews.png" in printed  # 2 of each drag type
    scored = [line for line in printed.splitlines() if "neighbour IoU" in line]  # against the ground truth
    assert len(scored) == 8 and all(" success " in line and "preview.png" in line for line in scored)
    assert "of 8 edits succeed against the ground truth" in printed
    sheet = Image.open(out / "previews.png")
    assert sheet.height == 8 * (4 * 64 + 2)  # one strip per scene, 64 px panels enlarged to 256


def test_the_demo_without_the_fixture_model_says_where_it_should_be(tmp_path, capsys, monkeypatch):
    from bench import demo

    monkeypatch.setattr(demo, "FIXTURE_MODEL", tmp_path / "no-model")
    assert main(["-q", "demo", "--out", str(tmp_path / "o")]) == 2
    assert "fixture/README.md" in capsys.readouterr().err
