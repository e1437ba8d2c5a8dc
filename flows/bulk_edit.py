"""`bulk-edit`: validate a manifest, split the items still to do into shards, run the
shards (here, or as flow runs on the `gpu` work pool), and merge one results row per
manifest row. `retry-failed` re-runs a run's failed and unfinished items.

Nothing is lost: `summary.json` is written before the first item, each item's row as it
finishes, and a rerun into the same output (or a UI "Retry") resumes: items that
succeeded with the same config are kept as they are, with their attempts.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from dragnext.cli import OutputPathError
from dragnext.config import build_config
from dragnext.fingerprint import model_fingerprint, unet_up_blocks
from dragnext.model import DEFAULT_MODEL, model_preset
from flows import fanout
from flows.lease import leased
from flows.results import (
    counts,
    previous_rows,
    publish,
    read_rows,
    read_summary,
    results_table,
    write_fallback,
    write_final,
    write_summary,
)
from flows.shard import HEARTBEAT_S, ItemsFailed, run_shard, shard_dir
from manifests.items import VALIDATION_THREADS, conform, item_config, item_input_digest, validate_rows
from manifests.schema import MANIFEST, ManifestError, read_table
from manifests.storage import (
    OutputUnwritable,
    absolute,
    exists,
    is_transient,
    join,
    parent,
    write_bytes,
)
from manifests.uris import UriPolicy
from tasks.stages import ItemContext, result_row

# A lease whose holder has not beaten for this long belongs to a run that died.
LEASE_STALE_AFTER_S = 60.0


def expand_output(output_uri: str) -> str:
    """`{date}` and `{flow_run}` in an output URI: the run's scheduled date (a nightly
    schedule writes a new folder each night) and its name."""
    scheduled = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    return format_output(output_uri, scheduled.strftime("%Y-%m-%d"), flow_run.name or "local")


def format_output(output_uri: str, date: str, run_name: str) -> str:
    try:
        return output_uri.format(date=date, flow_run=run_name)
    except (KeyError, IndexError, ValueError) as error:
        raise OutputPathError(f"output URI '{output_uri}': only {{date}} and {{flow_run}} may be filled in "
                              f"({type(error).__name__}: {error})") from None


def _chunks(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def outputs_exist(row: dict) -> bool:
    return all(row.get(k) and exists(row[k]) for k in ("image_uri", "preview_uri", "record_uri"))


def plan_items(rows: list[dict], valid: list[int], base, policy: UriPolicy, model_fp: str,
               previous: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str], set[str]]:
    """Each valid row's config and input digest, and which of them an earlier run already
    finished: same inputs (`manifests.digest`) and its outputs still there."""
    configs = {rows[i]["item_id"]: item_config(rows[i], base).to_record() for i in valid}

    def look(index: int) -> tuple[str, str | None, bool]:
        row = rows[index]
        item_id = row["item_id"]
        try:
            found = item_input_digest(row, configs[item_id], model_fp, policy)
        except (OSError, ValueError) as error:  # changed since it was checked: the worker will say
            if is_transient(error):
                raise
            return item_id, None, False
        earlier = previous.get(item_id)
        kept = bool(earlier and earlier["status"] == "succeeded" and earlier.get("input_digest") == found
                    and outputs_exist(earlier))
        return item_id, found, kept

    with ThreadPoolExecutor(max_workers=VALIDATION_THREADS) as pool:
        looked = list(pool.map(look, valid))
    return configs, {i: d for i, d, _ in looked}, {i for i, _, kept in looked if kept}


@flow(name="bulk-edit")
def bulk_edit(manifest_uri: str, output_uri: str, model: str = DEFAULT_MODEL,
              overrides: dict[str, Any] | None = None, item_filter: list[str] | None = None,
              allow_prefixes: list[str] | None = None, workers: int | None = None,
              shard_size: int | None = None, shard_deployment: str | None = None,
              retries: int = 2, retry_delay_s: float = 10.0, lost_after_s: float = 300.0,
              lease_stale_after_s: float = LEASE_STALE_AFTER_S) -> dict:
    """Edit every item of a Parquet manifest; write images, previews, records and results.

    overrides: config keys for the whole run (e.g. {"lora.steps": 40}); a row's `params`
        override them for that item.
    item_filter: run only these item ids; the others keep their earlier rows (or are `skipped`).
    allow_prefixes: where images and masks may come from besides the manifest's folder
        (e.g. ["s3://bucket/images/"]); see manifests/README.md.
    workers: items edited at once per shard, each in its own process (default: one per GPU).
    shard_deployment: run shards as flow runs of this deployment (e.g.
        "bulk-edit-shard/bulk-edit-shard" on the `gpu` pool); None runs them here.
    shard_size: items per shard (default: all here; two shards per online pool worker).
    lost_after_s: a shard's run that stops beating this long is declared lost.
    lease_stale_after_s: another run's lease on the output whose heartbeat is this old is
        taken over (that run died); a fresher one makes this run refuse.
    """
    output_uri = absolute(expand_output(output_uri))
    with leased(output_uri, str(flow_run.id), lease_stale_after_s, every_s=HEARTBEAT_S):
        return _bulk_edit(absolute(manifest_uri), output_uri, model, overrides or {}, item_filter,
                          list(allow_prefixes or ()), workers, shard_size, shard_deployment, retries,
                          retry_delay_s, lost_after_s)


def _bulk_edit(manifest_uri: str, output_uri: str, model: str, overrides: dict[str, Any],
               item_filter: list[str] | None, allow_prefixes: list[str], workers: int | None,
               shard_size: int | None, shard_deployment: str | None, retries: int, retry_delay_s: float,
               lost_after_s: float) -> dict:
    log = get_run_logger()
    started = time.time()
    base = build_config(overrides=overrides, preset=model_preset(model))
    conformed = conform(read_table(manifest_uri))
    if conformed.problems:
        raise ManifestError(f"manifest {manifest_uri} cannot be read: {'; '.join(conformed.problems)}")
    table = conformed.table
    rows = table.to_pylist()
    manifest_dir, run_id = parent(manifest_uri), str(flow_run.id)
    model_fp = model_fingerprint(model)
    summary = {
        "status": "running", "run_id": run_id, "manifest_uri": manifest_uri, "output_uri": output_uri,
        "model": model, "model_fingerprint": model_fp, "overrides": overrides,
        "allow_prefixes": allow_prefixes, "config": base.to_record(), "workers": workers,
        "shard_deployment": shard_deployment, "started": started,
        "results_uri": join(output_uri, "results.parquet"),
    }
    write_summary(output_uri, summary)
    policy = UriPolicy(manifest_dir, tuple(allow_prefixes))
    invalid = {p.row: p for p in validate_rows(rows, base, policy, row_problems=conformed.row_problems,
                                                up_blocks=unet_up_blocks(model))}
    previous = previous_rows(output_uri)
    wanted = set(item_filter) if item_filter is not None else None
    valid = [i for i in range(len(rows)) if i not in invalid]
    configs, digests, done_before = plan_items(rows, valid, base, policy, model_fp, previous)

    def context(row: dict, config: dict) -> ItemContext:
        return ItemContext(row={k: row[k] for k in MANIFEST.names}, manifest_dir=manifest_dir,
                           output_uri=output_uri, model=model, config=config, model_fingerprint=model_fp,
                           input_digest=digests.get(row["item_id"]))

    results: list[dict | None] = [None] * len(rows)
    to_run: dict[str, int] = {}
    for index, row in enumerate(rows):
        item_id = row["item_id"]
        if index in invalid:
            p = invalid[index]
            placeholder = {**row, "item_id": item_id or f"<row {index}>"}
            results[index] = result_row(context(placeholder, base.to_record()), "invalid", 0,
                                        error=f"item '{p.item_id}': {p.field}: {p.reason}")
            continue
        earlier = previous.get(item_id)
        if wanted is not None and item_id not in wanted:
            results[index] = earlier or result_row(context(row, configs[item_id]), "skipped", 0)
        elif item_id in done_before:
            results[index] = earlier
        else:
            to_run[item_id] = index
    resumed = sum(1 for i, r in enumerate(results) if r is not None and r["status"] == "succeeded")
    log.info("%d items: %d to edit, %d invalid, %d already done, %d not selected", len(rows), len(to_run),
             len(invalid), resumed, len(rows) - len(to_run) - len(invalid) - resumed)

    ids = list(to_run)
    size = shard_size or (fanout.default_shard_size(len(ids), shard_deployment) if shard_deployment
                          else max(1, len(ids)))
    shards = []
    for k, chunk in enumerate(_chunks(ids, size)):
        plan_uri = join(shard_dir(output_uri, k), "plan.json")
        write_bytes(plan_uri, json.dumps({
            "shard": k, "manifest_uri": manifest_uri, "output_uri": output_uri, "model": model,
            "model_fingerprint": model_fp, "config": base.to_record(), "allowed_prefixes": allow_prefixes,
            "item_ids": chunk, "retries": retries, "retry_delay_s": retry_delay_s,
            "input_digests": {i: digests[i] for i in chunk},
            "previous_attempts": {i: previous[i]["attempts"] for i in chunk if i in previous},
        }).encode())
        shards.append(fanout.Shard(k, plan_uri, chunk))

    finished: dict[str, dict] = {}
    stopped: str | None = None
    if shard_deployment:
        fanout.launch(shards, shard_deployment, run_id)
        fanout.wait(shards, output_uri, lost_after_s)
        stored = read_rows(output_uri)
        for shard in shards:
            finished.update(fanout.collect(shard, output_uri, stored))
    else:
        for shard in shards:
            outcome = run_shard(shard.plan_uri, workers, stopped=stopped)
            finished.update({r["item_id"]: r for r in outcome.rows})
            stopped = stopped or outcome.stopped
    for shard in shards:
        for item_id in shard.item_ids:
            if item_id not in finished:
                earlier = previous.get(item_id)
                finished[item_id] = result_row(
                    context(rows[to_run[item_id]], configs[item_id]), "failed",
                    earlier["attempts"] if earlier else 0,
                    error=f"not finished: shard {shard.index}'s {shard.lost or 'run ended without its row'}")
    for item_id, index in to_run.items():
        results[index] = finished[item_id]

    extra = {name: table[name].to_pylist() for name in table.column_names if name not in MANIFEST.names}
    summary.update(status="finished", counts=counts(results), resumed=resumed, shards=len(shards),
                   wall_s=round(time.time() - started, 2))
    if stopped:
        summary.update(status="stopped", stopped=stopped)
        raise OutputUnwritable(f"the run stopped: {stopped}; "
                               f"{write_fallback(results_table(results, extra), summary)}")
    write_final(output_uri, results_table(results, extra), summary)
    publish(results)
    log.info("done: %s in %.1f s -> %s", summary["counts"], summary["wall_s"], summary["results_uri"])
    failed = summary["counts"].get("failed", 0)
    if failed:
        raise ItemsFailed(f"{failed} of {len(rows)} items failed ({summary['counts']}); retry them with "
                          f"`dragnext retry {summary['results_uri']}` or the retry-failed deployment",
                          summary)
    return summary


@flow(name="retry-failed")
def retry_failed(results_uri: str, include_invalid: bool = False, workers: int | None = None,
                 retries: int = 2, retry_delay_s: float = 10.0) -> dict:
    """Re-run a run's `failed` items and those it never finished (and `invalid` ones, once the
    manifest was fixed) with the run's config, reusing every stored stage whose inputs are
    unchanged. Works on a run that was killed too: its summary.json is written first."""
    output_uri = parent(absolute(results_uri))
    summary = read_summary(output_uri)
    manifest = conform(read_table(summary["manifest_uri"])).table.column("item_id").to_pylist()
    earlier = previous_rows(output_uri)
    keep = {"succeeded", "skipped"} | (set() if include_invalid else {"invalid"})
    ids = [i for i in manifest if i is None or earlier.get(i, {}).get("status") not in keep]
    get_run_logger().info("retrying %d items", len(ids))
    return bulk_edit(summary["manifest_uri"], output_uri, model=summary["model"],
                     overrides=summary["overrides"], item_filter=[i for i in ids if i is not None],
                     allow_prefixes=summary["allow_prefixes"], workers=workers, retries=retries,
                     retry_delay_s=retry_delay_s, shard_deployment=summary["shard_deployment"])
