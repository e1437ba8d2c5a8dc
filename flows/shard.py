"""One shard of a bulk run: a list of item ids of one manifest, edited by this machine's
workers. `run_shard` is the work; the `bulk-edit-shard` flow is what the parent launches
on the `gpu` pool, one flow run per shard. Every finished item's row is written as it
finishes (`OUT/rows/ID.json`), then the shard's rows as `OUT/shards/K/results.parquet`."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from dragnext.config import EditConfig
from flows.results import results_table, write_row
from manifests.items import conform, item_config
from manifests.schema import MANIFEST, read_table, table_bytes
from manifests.storage import StoreUnavailable, join, parent, read_bytes, write_bytes
from tasks.item_task import edit_item_task
from tasks.pool import default_workers, item_runner
from tasks.stages import ItemContext, is_retryable, result_row

# Progress as data: one record per finished item, with `done`, `total` and `row` attached.
# The CLI's progress bar listens here; on a pool the lines reach the UI.
progress_log = logging.getLogger("dragnext.progress")
progress_log.setLevel(logging.INFO)  # whatever the root logger's level: listeners decide
RUN_ID_KEY = b"dragnext.run_id"  # in a shard's results.parquet: the flow run that wrote it
HEARTBEAT_S = float(os.environ.get("DRAGNEXT_HEARTBEAT_S", "10"))


class ItemsFailed(RuntimeError):
    """Some items failed: raised after everything was written, so the flow run ends Failed."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def shard_dir(output_uri: str, shard: int) -> str:
    return join(output_uri, "shards", str(shard))


@contextmanager
def heartbeat(uri: str, every_s: float) -> Iterator[None]:
    """Rewrite `uri` every `every_s` seconds while the block runs: the parent's sign that this
    shard's process is alive (a flow run whose machine died stays Running otherwise)."""
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            try:
                write_bytes(uri, json.dumps({"beat": count, "pid": os.getpid(),
                                             "host": socket.gethostname(), "time": time.time()}).encode())
            except Exception as error:  # a missed beat is not worth failing items for
                logging.getLogger(__name__).warning("heartbeat %s: %s", uri, error)
            stop.wait(every_s)

    thread = threading.Thread(target=beat, daemon=True, name="shard-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _failed_row(ctx: ItemContext, error: BaseException, retries: int) -> dict:
    attempts = retries + 1 if is_retryable(error) else 1
    return result_row(ctx, "failed", attempts, error=f"{type(error).__name__}: {error}")


def run_shard(plan_uri: str, workers: int | None = None) -> list[dict]:
    """Edit the items of a shard plan (written by the parent flow); their rows, as finished."""
    log = get_run_logger()
    plan = json.loads(read_bytes(plan_uri))
    wanted = set(plan["item_ids"])
    table, _ = conform(read_table(plan["manifest_uri"]))
    base = EditConfig.model_validate(plan["config"])
    contexts = [ItemContext(row={k: row[k] for k in MANIFEST.names},
                            manifest_dir=parent(plan["manifest_uri"]),
                            output_uri=plan["output_uri"], model=plan["model"],
                            config=item_config(row, base).to_record(),
                            allowed_prefixes=tuple(plan["allowed_prefixes"]))
                for row in table.to_pylist() if row["item_id"] in wanted]
    run_id, retries = str(flow_run.id), plan["retries"]
    task = edit_item_task.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(plan["retry_delay_s"])(retries))
    n_workers = workers or default_workers()
    log.info("shard %d: %d items on %d worker(s)", plan["shard"], len(contexts), n_workers)
    rows: list[dict] = []
    runner = item_runner(n_workers)
    try:
        with heartbeat(join(shard_dir(plan["output_uri"], plan["shard"]), "heartbeat.json"), HEARTBEAT_S), \
                ThreadPoolTaskRunner(max_workers=n_workers) as pool:
            futures = {pool.submit(task, parameters={"ctx": ctx, "runner": runner}): ctx for ctx in contexts}
            for done, future in enumerate(as_completed(futures), start=1):
                ctx = futures[future]
                try:
                    row = future.result()
                except Exception as error:  # one item's failure never fails its siblings
                    row = _failed_row(ctx, error, retries)
                    log.error("item %s failed: %s", ctx.item_id, row["error"])
                row["attempts"] += plan["previous_attempts"].get(ctx.item_id, 0)
                rows.append(row)
                try:
                    write_row(plan["output_uri"], row, run_id)
                except StoreUnavailable as error:  # kept in memory: the shard's results carry it
                    log.error("item %s: row not stored: %s", ctx.item_id, error)
                progress_log.info("%s: %s (%d/%d)", row["item_id"], row["status"], done, len(contexts),
                                  extra={"done": done, "total": len(contexts), "row": row})
    finally:
        runner.close()
    table = results_table(rows, {})
    table = table.replace_schema_metadata({**table.schema.metadata, RUN_ID_KEY: run_id.encode()})
    try:
        write_bytes(join(shard_dir(plan["output_uri"], plan["shard"]), "results.parquet"), table_bytes(table))
    except StoreUnavailable as error:
        log.error("shard %d: results not stored: %s", plan["shard"], error)
    return rows


@flow(name="bulk-edit-shard")
def bulk_edit_shard(plan_uri: str, workers: int | None = None) -> dict:
    """Edit one shard of a bulk run (launched by `bulk-edit`; `plan_uri` names its items)."""
    rows = run_shard(plan_uri, workers)
    failed = [r["item_id"] for r in rows if r["status"] == "failed"]
    summary = {"items": len(rows), "failed": failed}
    if failed:
        raise ItemsFailed(f"{len(failed)} of {len(rows)} items failed: {', '.join(failed[:10])}", summary)
    return summary
