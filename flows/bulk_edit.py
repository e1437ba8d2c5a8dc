"""`bulk_edit`: validate a manifest, fan its items out over workers, and write one results
row per manifest item. `retry_failed` re-runs the failed items of a finished run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed

from dragnext.config import build_config
from dragnext.model import DEFAULT_MODEL, model_preset
from flows.results import counts, publish_table, read_results, results_table, write_run
from flows.workers import default_workers, task_runner
from manifests.items import conform, item_config, validate_rows
from manifests.schema import MANIFEST, read_table
from manifests.storage import join, parent, read_bytes
from tasks.stages import ItemContext, edit_item, is_transient, result_row

# Called as (done, total, row) when an item finishes: the CLI hangs its progress bar here.
progress_listeners: list[Callable[[int, int, dict], None]] = []


def _backoff(retries: int, delay_s: float) -> list[float]:
    return [delay_s * 4**i for i in range(retries)]


def _failed_row(ctx: ItemContext, error: BaseException, retries: int) -> dict:
    attempts = retries + 1 if is_transient(error) else 1
    return result_row(ctx, "failed", attempts, error=f"{type(error).__name__}: {error}")


@flow(name="bulk-edit")
def bulk_edit(manifest_uri: str, output_uri: str, model: str = DEFAULT_MODEL,
              overrides: dict[str, Any] | None = None, item_filter: list[str] | None = None,
              workers: int | None = None, retries: int = 2, retry_delay_s: float = 10.0,
              merge_with: str | None = None) -> dict:
    """Edit every item of a Parquet manifest; write images, previews, records and results.

    overrides: config keys for the whole run (e.g. {"lora.steps": 40}); a row's `params`
        override them for that item.
    item_filter: run only these item ids; the others are `skipped` (or keep their rows in
        `merge_with`, a previous results file, as `retry_failed` does).
    workers: items edited at once, each in its own process (default: one per GPU, 1 on CPU).
    """
    log = get_run_logger()
    started = time.time()
    base = build_config(overrides=overrides or {}, preset=model_preset(model))
    table, problems = conform(read_table(manifest_uri))
    if problems:
        raise ValueError(f"manifest {manifest_uri} cannot be read: {'; '.join(problems)}")
    rows = table.to_pylist()
    manifest_dir = parent(manifest_uri)
    previous = {r["item_id"]: r for r in read_results(merge_with)} if merge_with else {}
    invalid = {p.row: p for p in validate_rows(rows, base)}
    wanted = set(item_filter) if item_filter is not None else None

    def context(row: dict, config: dict) -> ItemContext:
        return ItemContext(row={k: row[k] for k in MANIFEST.names}, manifest_dir=manifest_dir,
                           output_uri=output_uri, model=model, config=config)

    results: list[dict | None] = [None] * len(rows)
    contexts: dict[int, ItemContext] = {}
    for index, row in enumerate(rows):
        if wanted is not None and row["item_id"] not in wanted:
            results[index] = previous.get(row["item_id"]) or result_row(
                context(row, base.to_record()), "skipped", 0)
        elif index in invalid:
            p = invalid[index]
            results[index] = result_row(context(row, base.to_record()), "invalid", 0,
                                        error=f"item '{p.item_id}': {p.field}: {p.reason}")
        else:
            contexts[index] = context(row, item_config(row, base).to_record())
    log.info("%d items: %d to edit, %d invalid, %d not selected", len(rows), len(contexts),
             len(invalid), len(rows) - len(contexts) - len(invalid))

    progress = create_progress_artifact(0.0, key="bulk-edit-progress",
                                        description=f"items of {manifest_uri}")
    n_workers = workers or default_workers()
    task = edit_item.with_options(retries=retries, retry_delay_seconds=_backoff(retries, retry_delay_s))
    with task_runner(n_workers) as runner:
        futures = {runner.submit(task, parameters={"ctx": ctx}): index for index, ctx in contexts.items()}
        for done, future in enumerate(as_completed(futures), start=1):
            index = futures[future]
            try:
                row = future.result()
            except Exception as error:  # one item's failure never fails its siblings
                row = _failed_row(contexts[index], error, retries)
                log.error("item %s failed: %s", row["item_id"], row["error"])
            earlier = previous.get(row["item_id"])
            if earlier:
                row["attempts"] += earlier["attempts"]
            results[index] = row
            update_progress_artifact(progress, 100.0 * done / len(futures))
            for listener in progress_listeners:
                listener(done, len(futures), row)
    update_progress_artifact(progress, 100.0)

    extra = {name: table[name].to_pylist() for name in table.column_names if name not in MANIFEST.names}
    summary = {
        "manifest_uri": manifest_uri, "output_uri": output_uri, "model": model,
        "overrides": overrides or {}, "config": base.to_record(), "workers": n_workers,
        "counts": counts(results), "wall_s": round(time.time() - started, 2),
        "results_uri": join(output_uri, "results.parquet"),
    }
    write_run(output_uri, results_table(results, extra), summary)
    publish_table(results)
    log.info("done: %s in %.1f s -> %s", summary["counts"], summary["wall_s"], summary["results_uri"])
    return summary


@flow(name="retry-failed")
def retry_failed(results_uri: str, include_invalid: bool = False, workers: int | None = None,
                 retries: int = 2, retry_delay_s: float = 10.0) -> dict:
    """Re-run a finished run's `failed` items (and `invalid` ones, once the manifest was
    fixed) with the run's config, reusing every stage artefact whose inputs are unchanged."""
    summary = json.loads(read_bytes(join(parent(results_uri), "summary.json")))
    statuses = {"failed", "invalid"} if include_invalid else {"failed"}
    ids = [r["item_id"] for r in read_results(results_uri) if r["status"] in statuses]
    get_run_logger().info("retrying %d items (%s)", len(ids), ", ".join(sorted(statuses)))
    return bulk_edit(summary["manifest_uri"], summary["output_uri"], model=summary["model"],
                     overrides=summary["overrides"], item_filter=ids, workers=workers,
                     retries=retries, retry_delay_s=retry_delay_s, merge_with=results_uri)
