"""Planning without Prefect: `dragnext plan`, the cost model, the plan's merge, and
validation at scale reading headers only."""

import json
import time

import pytest

from command.main import main
from dragnext.config import build_config
from dragnext.cost import estimate, unet_passes
from dragnext.edit import edit_batch
from manifests.examples import DEMO_MANIFEST
from manifests.schema import read_table, write_table
from tasks.plan import make_plan
from tests.conftest import FAST


def test_the_pass_count_from_the_config_is_the_count_an_edit_makes(tiny_model, scene):
    from tests.scenes import batch_items as items

    for method in ("dragnext", "warp"):
        config = build_config(overrides=[*FAST, f"method={method}"])
        [result] = edit_batch(items(scene)[:1], tiny_model, config)
        measured = {stage: {k: c[k] for k in ("forward", "backward")}
                    for stage, c in result.unet_passes["by_stage"].items()}
        assert measured == unet_passes(config), method


def test_plan_prints_items_invalid_rows_shards_passes_and_device_hours(tmp_path, capsys):
    import shutil

    import pyarrow as pa

    shutil.copytree(DEMO_MANIFEST.parent, tmp_path / "job")
    manifest = tmp_path / "job" / DEMO_MANIFEST.name
    table = read_table(str(manifest))
    rows = table.to_pylist()
    rows[1]["drags"][0]["target"] = {"x": 9999.0, "y": 1.0}  # outside the image
    write_table(pa.Table.from_pylist(rows, schema=table.schema), str(manifest))
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"device": "test box", "settings": {
        "lora off, batch 4": {"lora": False, "batch": 4, "items_per_hour": 700.0},
        "lora off, batch 1": {"lora": False, "batch": 1, "items_per_hour": 350.0}}}))
    code = main(["plan", str(manifest), "--model", "fixture/model", "--profile", str(profile),
                 "--shard-size", "3", "--json", str(tmp_path / "plan.json")])
    printed = capsys.readouterr().out
    assert code == 1  # an invalid row
    bad = rows[1]["item_id"]
    assert f"invalid: row 1 item '{bad}': drags[0].target" in printed
    assert "8 rows: 7 to edit, 1 invalid, 0 already done" in printed and "3 shard(s)" in printed
    assert "estimated 0.01 device-hours on test box (profile setting: lora off, batch 4)" in printed
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["estimate"]["unet_passes"]["forward"] == 7 * sum(
        p["forward"] for p in plan["estimate"]["unet_passes_per_item"].values())


def test_a_plan_merges_one_row_per_manifest_row_without_prefect(tmp_path):
    base = build_config(overrides=FAST)
    plan = make_plan(str(DEMO_MANIFEST), str(tmp_path / "out"), "fixture/model", "fp", base, {},
                     item_filter=None)
    ids = list(plan.to_run)
    assert len(plan.shards(3)) == 3 and sum(len(s) for s in plan.shards(3)) == len(ids) == 8
    entry = plan.shard_items(ids[:1])[0]
    assert entry["config"] is None and entry["row"]["item_id"] == ids[0]  # the run's config, not a copy
    done = {ids[0]: {**plan.merge({}, {})[0], "status": "succeeded"}}
    merged = plan.merge(done, {ids[1]: "shard 0's run crashed"})
    assert [r["item_id"] for r in merged] == [r["item_id"] for r in plan.rows]
    assert merged[0]["status"] == "succeeded"
    lost = merged[plan.to_run[ids[1]]]
    assert lost["status"] == "failed" and "crashed" in lost["error"]
    assert estimate(8, base, None)["unet_passes"]["forward"] > 0


@pytest.mark.integration
def test_validating_10000_rows_on_s3_reads_only_headers_once_per_file(s3_store, tiny_model_dir):
    """Rows name 100 distinct 512² photo-sized images: the store serves each image's header
    once, not each row's, and never a whole image."""
    from bench.manifest_scale import manifest, upload_images

    bucket, proxy, direct = s3_store
    name = bucket.removeprefix("s3://")
    upload_images(direct, f"{name}/scale", count=100, noisy=True)
    direct.pipe(f"{name}/scale/m.parquet", manifest(10_000, images=100))
    whole = direct.du(f"{name}/scale/images") + direct.du(f"{name}/scale/masks")
    before, started = proxy.served, time.monotonic()
    plan = make_plan(f"{bucket}/scale/m.parquet", f"{bucket}/scale/out", str(tiny_model_dir), "fp",
                     build_config(overrides=FAST), {})
    seconds, served = time.monotonic() - started, proxy.served - before
    assert len(plan.to_run) == 10_000 and not plan.invalid
    assert seconds < 120, seconds  # ~35 s on 2 cores
    # a 64 KiB header of each image, a HEAD of each file, the manifest: a tenth of the files
    assert served < 100 * 64 * 1024 + 2 * 2**20 < whole / 5, (served, whole)


def test_every_flow_parameter_has_a_description_the_prefect_ui_shows():
    """Prefect reads Google-style `Args:` docstrings into the deployment's parameter form."""
    from prefect.utilities.callables import parameter_schema

    from flows.bulk_edit import bulk_edit, retry_failed
    from flows.shard import bulk_edit_shard

    for flow in (bulk_edit, retry_failed, bulk_edit_shard):
        properties = parameter_schema(flow.fn).model_dump()["properties"]
        missing = [name for name, p in properties.items() if not p.get("description")]
        assert not missing, (flow.name, missing)
