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
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from dragnext.cli import OutputPathError
from dragnext.config import build_config
from dragnext.model import DEFAULT_MODEL, ModelSource, model_preset, source_architecture
from flows import fanout
from flows.lease import leased
from flows.results import (
    Links,
    counts,
    flagged,
    previous_rows,
    publish,
    read_profile,
    read_summary,
    results_table,
    write_fallback,
    write_final,
    write_summary,
)
from flows.selection import Selection, check_selection, read_selection
from flows.shard import ItemsFailed, heartbeat_s, run_shard, shard_dir
from manifests.items import read_manifest
from manifests.storage import OutputUnwritable, absolute, join, parent, write_bytes
from tasks.guard import RunGuard
from tasks.plan import make_plan, summary_counts
from tasks.pool import AUTO_WORKERS

# A lease whose holder has not beaten for this long belongs to a run that died.
LEASE_STALE_AFTER_S = 60.0
# A shard's run that has shown no sign of life (a beat, a change of state) for this long is lost.
LOST_AFTER_S = 300.0


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


# The flows' parameters have no `X | None` types: Prefect's run form renders the None branch
# of such a union as an error ("Property is type None"). An empty value or AUTO_WORKERS
# stands for "not given"; the lists and dicts are never mutated.


@flow(name="bulk-edit")
def bulk_edit(manifest_uri: str, output_uri: str, model: str = DEFAULT_MODEL,
              overrides: dict[str, Any] = {}, item_filter: list[str] = [],  # noqa: B006
              allow_prefixes: list[str] = [], workers: int = AUTO_WORKERS,  # noqa: B006
              shard_size: int = 0, shard_deployment: str = "",
              retries: int = 2, retry_delay_s: float = 10.0, lost_after_s: float = LOST_AFTER_S,
              lease_stale_after_s: float = LEASE_STALE_AFTER_S, profile: str = "",
              vae: str = "", lora: str = "", lora_scale: float = 1.0,
              guard_items: int = 20, guard_failed_fraction: float = 0.5) -> dict:
    """Edit every item of a Parquet manifest; write images, previews, records and results.

    Args:
        manifest_uri: the Parquet manifest (a local path or s3://bucket/key); its images and
            masks are read relative to its folder.
        output_uri: where images, previews, records and results.parquet go; {date} and
            {flow_run} are filled in (a nightly schedule writes a folder per night).
        model: hub id or local diffusers folder of an SD1.x, SD2.x or SDXL model.
        overrides: config keys for the whole run, e.g. {"lora.steps": 40}; a row's `params`
            override them for that item.
        item_filter: run only these item ids; the others keep their earlier rows (or are
            `skipped`); empty: every item.
        allow_prefixes: where images and masks may come from besides the manifest's folder,
            e.g. ["s3://bucket/images/"]; see manifests/README.md.
        workers: items edited at once per shard, each in its own process; -1: one per GPU,
            one on a CPU machine; 0: in the run's own process.
        shard_size: items per shard; 0: all here, or two shards per online pool worker.
        shard_deployment: run shards as flow runs of this deployment, e.g.
            "bulk-edit-shard/bulk-edit-shard" on the `gpu` pool; empty runs them here.
        retries: retries of an item's transient failures (store outages, CUDA out of memory).
        retry_delay_s: the first retry's delay in seconds; it doubles each time.
        lost_after_s: a shard's run that neither beats nor changes state this long is declared lost.
        lease_stale_after_s: another run's lease on the output whose heartbeat is this old is
            taken over (that run died); a fresher one makes this run refuse.
        profile: a measured profile (docs/gpu-profile.json, docs/throughput.json) for the
            device-hours estimate in summary.json; empty: none.
        vae: an AutoencoderKL folder that replaces the model's VAE; empty: the model's own.
        lora: a style LoRA (.safetensors, diffusers or kohya format) fused into the model at
            `lora_scale`; each item's own LoRA trains on top of it; empty: none.
        lora_scale: the style LoRA's weight.
        guard_items: the run guard judges this many first items of each shard (tasks/guard.py).
        guard_failed_fraction: a shard starts no more items once more than this fraction of
            its first `guard_items` failed; negative: never.
    """
    source = ModelSource(model=model, vae=vae or None, lora=lora or None, lora_scale=lora_scale)
    fraction = None if guard_failed_fraction < 0 else guard_failed_fraction
    guard = RunGuard(items=guard_items, failed_fraction=fraction)
    return run_bulk(manifest_uri, absolute(expand_output(output_uri)), source, dict(overrides),
                    list(item_filter) or None, list(allow_prefixes), workers, shard_size or None,
                    shard_deployment or None, retries, retry_delay_s, lost_after_s, lease_stale_after_s,
                    profile or None, guard)


def run_bulk(manifest_uri: str, output_uri: str, model: ModelSource, overrides: dict[str, Any],
             item_filter: list[str] | None, allow_prefixes: list[str], workers: int | None,
             shard_size: int | None, shard_deployment: str | None, retries: int, retry_delay_s: float,
             lost_after_s: float, lease_stale_after_s: float, profile: str | None, guard: RunGuard,
             retry_of: dict | None = None, item_params: dict[str, dict] | None = None) -> dict:
    """A bulk edit in the flow run that calls it (`bulk-edit`, or `retry-failed`, whose logs,
    results and artifacts are then its own), holding the output's lease throughout.
    `retry_of` is the earlier run's summary: its run id stays the run's, and this one is
    added to its `retry_runs`. `item_params` go over those items' own `params` (a retry
    selection's overrides)."""
    with leased(output_uri, str(flow_run.id), lease_stale_after_s, every_s=heartbeat_s()):
        return _bulk_edit(absolute(manifest_uri), output_uri, model, overrides, item_filter, allow_prefixes,
                          workers, shard_size, shard_deployment, retries, retry_delay_s, lost_after_s,
                          profile, guard, retry_of, item_params)


def _bulk_edit(manifest_uri: str, output_uri: str, model: ModelSource, overrides: dict[str, Any],
               item_filter: list[str] | None, allow_prefixes: list[str], workers: int | None,
               shard_size: int | None, shard_deployment: str | None, retries: int, retry_delay_s: float,
               lost_after_s: float, profile: str | None, guard: RunGuard, retry_of: dict | None,
               item_params: dict[str, dict] | None) -> dict:
    log = get_run_logger()
    started = time.time()
    base = build_config(overrides=overrides, preset=model_preset(model.model))
    this_run, model_fp = str(flow_run.id), model.fingerprint()
    summary = {
        "status": "running", "run_id": retry_of["run_id"] if retry_of else this_run,
        "manifest_uri": manifest_uri, "output_uri": output_uri,
        **model.to_record(), "model_fingerprint": model_fp, "overrides": overrides,
        "allow_prefixes": allow_prefixes, "config": base.to_record(), "workers": workers,
        "shard_deployment": shard_deployment, "started": started,
        "results_uri": join(output_uri, "results.parquet"),
        **({"retry_runs": [*retry_of.get("retry_runs", []), this_run]} if retry_of else {}),
    }
    write_summary(output_uri, summary)
    plan = make_plan(manifest_uri, output_uri, model, model_fp, base, previous_rows(output_uri), item_filter,
                     allow_prefixes, source_architecture(model), item_params)
    counted = summary_counts(plan)
    summary.update(plan=counted, estimate=plan.estimate(read_profile(profile)))
    write_summary(output_uri, summary)
    log.info("%(rows)d items: %(to_run)d to edit, %(invalid)d invalid, %(kept)d already done, "
             "%(not_selected)d not selected", counted)

    size = shard_size or (fanout.default_shard_size(len(plan.to_run), shard_deployment) if shard_deployment
                          else max(1, len(plan.to_run)))
    shards = []
    for k, chunk in enumerate(plan.shards(size)):
        plan_uri = join(shard_dir(output_uri, k), "plan.json")
        write_bytes(plan_uri, json.dumps({
            "shard": k, "output_uri": output_uri, "model": model.to_record(), "config": base.to_record(),
            "retries": retries, "retry_delay_s": retry_delay_s, "items": plan.shard_items(chunk),
            "manifest_uri": manifest_uri, "model_fingerprint": model_fp, "allowed_prefixes": allow_prefixes,
            "guard": guard.model_dump(),
        }).encode())
        shards.append(fanout.Shard(k, plan_uri, chunk))

    finished: dict[str, dict] = {}
    stopped: str | None = None  # the output cannot take writes
    guarded: str | None = None  # the guard stopped the run: its first items mostly failed
    if shard_deployment:
        pool = fanout.launch(shards, shard_deployment, this_run)
        log.info("launched %d shard(s) of up to %d items as runs of %s on the '%s' work pool", len(shards),
                 size, shard_deployment, pool)
        fanout.wait(shards, output_uri, lost_after_s)
        finished = fanout.collect_all(shards, output_uri)
    else:
        log.info("running %d shard(s) of up to %d items in this flow run", len(shards), size)
        for shard in shards:
            outcome = run_shard(shard.plan_uri, workers, stopped=stopped, guarded=guarded)
            finished.update({r["item_id"]: r for r in outcome.rows})
            stopped, guarded = stopped or outcome.stopped, guarded or outcome.guarded
    lost = {i: f"shard {shard.index}'s {shard.lost or 'run ended without its row'}"
            for shard in shards for i in shard.item_ids}
    results = plan.merge(finished, lost)
    if plan.kept:
        log.warning("%d re-edited items did not succeed and keep their earlier succeeded rows: %s",
                    len(plan.kept), "; ".join(f"{i}: {why}" for i, why in plan.kept.items()))

    summary.update(status="finished", counts=counts(results), needs_review=flagged(results),
                   resumed=plan.resumed, shards=len(shards), kept_succeeded=plan.kept,
                   wall_s=round(time.time() - started, 2), guard=guard.model_dump(), guard_stopped=guarded)
    table = results_table(results, plan.extra_columns)
    if stopped:
        summary.update(status="stopped", stopped=stopped)
        raise OutputUnwritable(f"the run stopped: {stopped}; {write_fallback(table, summary)}")
    write_final(output_uri, table, summary)
    publish(results, summary, Links.from_env(summary["results_uri"]))
    log.info("done: %s in %.1f s -> %s", summary["counts"], summary["wall_s"], summary["results_uri"])
    failed = summary["counts"].get("failed", 0)
    if failed:
        why = f"the run's guard stopped it: {guarded}; " if guarded else ""
        raise ItemsFailed(f"{why}{failed} of {len(results)} items failed ({summary['counts']}); retry them "
                          f"with `dragnext retry {summary['results_uri']}` or the retry-failed deployment",
                          summary)
    return summary


def run_source(summary: dict) -> ModelSource:
    """The model a run's summary says it edited with."""
    return ModelSource(model=summary["model"], vae=summary.get("vae"), lora=summary.get("lora"),
                       lora_scale=summary.get("lora_scale", 1.0))


def checked_selection(selection_uri: str, results_uri: str, summary: dict) -> Selection:
    """The retry selection, checked against its run before anything runs or is written: its
    items are the run's, its overrides valid for each of them (`flows.selection`)."""
    selection = read_selection(selection_uri, results_uri)
    source = run_source(summary)
    base = build_config(overrides=summary["overrides"], preset=model_preset(source.model))
    rows = read_manifest(summary["manifest_uri"]).table.to_pylist()
    check_selection(selection, selection_uri, list(previous_rows(parent(absolute(results_uri)))), rows, base,
                    source_architecture(source))
    return selection


@flow(name="retry-failed")
def retry_failed(results_uri: str, include_invalid: bool = False, workers: int = AUTO_WORKERS,
                 retries: int = 2, retry_delay_s: float = 10.0, selection_uri: str = "") -> dict:
    """Re-run a run's `failed` items and those it never finished (and `invalid` ones, once the
    manifest was fixed) with the run's config, reusing every stored stage whose inputs are
    unchanged. Works on a run that was killed too: its summary.json is written first.

    Args:
        results_uri: the run's results.parquet (local path or s3://…).
        include_invalid: also re-run `invalid` items (after the manifest was fixed).
        workers: items edited at once per shard, each in its own process; -1: one per GPU, one
            on a CPU machine; 0: in the run's own process.
        retries: retries of an item's transient failures.
        retry_delay_s: the first retry's delay in seconds; it doubles each time.
        selection_uri: a retry selection (the studio's "send back" writes one): re-run exactly
            its items, with its overrides over their own params; empty: the failed items.
    """
    output_uri = parent(absolute(results_uri))
    summary = read_summary(output_uri)
    item_params = None
    if selection_uri:
        selection = checked_selection(selection_uri, results_uri, summary)
        ids = list(dict.fromkeys(selection.items))
        item_params = {i: selection.overrides for i in ids} if selection.overrides else None
        get_run_logger().info("retrying the %d selected items of run %s (selection %s, overrides %s)",
                              len(ids), summary["run_id"], selection_uri, selection.overrides or "none")
    else:
        manifest = read_manifest(summary["manifest_uri"]).table.column("item_id").to_pylist()
        earlier = previous_rows(output_uri)
        keep = {"succeeded", "skipped"} | (set() if include_invalid else {"invalid"})
        ids = [i for i in manifest if i is not None and earlier.get(i, {}).get("status") not in keep]
        get_run_logger().info("retrying %d items of run %s", len(ids), summary["run_id"])
    source = run_source(summary)
    guard = RunGuard.model_validate(summary.get("guard") or {})
    return run_bulk(summary["manifest_uri"], output_uri, source, summary["overrides"], ids,
                    summary["allow_prefixes"], workers, None, summary["shard_deployment"], retries,
                    retry_delay_s, LOST_AFTER_S, LEASE_STALE_AFTER_S, None, guard, retry_of=summary,
                    item_params=item_params)
