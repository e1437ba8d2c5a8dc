"""One shard of a bulk run: a list of item ids of one manifest, edited by this machine's
workers. `run_shard` is the work; the `bulk-edit-shard` flow is what the parent launches
on the `gpu` pool, one flow run per shard. Every finished item's row is written as it
finishes (`OUT/rows/ID.json`), then the shard's rows as `OUT/shards/K/results.parquet`."""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from dragnext.batching import config_key, dispatch_size
from dragnext.config import EditConfig
from dragnext.model_source import ModelSource
from flows.periodic import every
from flows.results import results_table, write_row
from manifests.schema import table_bytes
from manifests.storage import (
    OutputUnwritable,
    StoreUnavailable,
    join,
    parent,
    read_bytes,
    unwritable_reason,
    write_bytes,
)
from tasks.batch_task import edit_batch_task
from tasks.guard import GuardWatch, RunGuard
from tasks.pool import (
    AUTO_WORKERS,
    CLOSING,
    InlineRunner,
    ProcessRunner,
    RunStopped,
    default_workers,
    item_runner,
)
from tasks.stages import ItemContext, failed_outcome

# Progress as data: one record per finished item, with `done`, `total` and `row` attached.
# The CLI's progress bar listens here; on a pool the lines reach the UI.
progress_log = logging.getLogger("dragnext.progress")
progress_log.setLevel(logging.INFO)  # whatever the root logger's level: listeners decide
RUN_ID_KEY = b"dragnext.run_id"  # in a shard's results.parquet: the flow run that wrote it
def heartbeat_s() -> float:
    """How often a shard and a run's lease beat: `DRAGNEXT_HEARTBEAT_S` (10), read when used."""
    return float(os.environ.get("DRAGNEXT_HEARTBEAT_S", "10"))
# Interrupted, a run waits this long for the items in hand before it kills their workers.
INTERRUPT_GRACE_S = 3.0


class ItemsFailed(RuntimeError):
    """Some items failed: raised after everything was written, so the flow run ends Failed."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def shard_dir(output_uri: str, shard: int) -> str:
    return join(output_uri, "shards", str(shard))


def heartbeat(uri: str, every_s: float):
    """Rewrite `uri` every `every_s` seconds while the block runs: the parent's sign that this
    shard's process is alive (a flow run whose machine died stays Running otherwise)."""
    count = itertools.count(1)

    def beat() -> None:
        write_bytes(uri, json.dumps({"beat": next(count), "pid": os.getpid(), "host": socket.gethostname(),
                                     "time": time.time()}).encode())

    return every(every_s, beat, f"shard heartbeat {uri}", first_now=True)


@dataclass
class ShardOutcome:
    rows: list[dict]
    stopped: str | None  # why the shard stopped dispatching (a full or read-only output)
    guarded: str | None = None  # why the run's guard stopped it (its first items mostly failed)


def _contexts(plan: dict) -> list[ItemContext]:
    """The shard's items as the parent planned them: rows, configs and digests travel in
    the plan, so no shard reads the manifest again."""
    return [ItemContext(row=entry["row"], manifest_dir=parent(plan["manifest_uri"]),
                        output_uri=plan["output_uri"], model=ModelSource.of(plan["model"]),
                        config=entry["config"] or plan["config"],
                        allowed_prefixes=tuple(plan["allowed_prefixes"]),
                        model_fingerprint=plan["model_fingerprint"], input_digest=entry["input_digest"],
                        previous_attempts=entry["previous_attempts"])
            for entry in plan["items"]]


class _Rows:
    """The shard's finished rows: each stored as it arrives (`OUT/rows/ID.json`) and counted
    on the progress log. A write the output refuses for good stops the runner."""

    def __init__(self, plan: dict, run_id: str, runner: InlineRunner | ProcessRunner, total: int):
        self.plan, self.run_id, self.runner, self.total = plan, run_id, runner, total
        self.rows: dict[str, dict] = {}
        self.log = get_run_logger()
        self.guard = GuardWatch(RunGuard.model_validate(plan.get("guard") or {}))
        self.guarded: str | None = None

    def add(self, ctx: ItemContext, row: dict, error: BaseException | None = None) -> None:
        if ctx.item_id in self.rows:
            return
        row["attempts"] += ctx.previous_attempts
        self.rows[ctx.item_id] = row
        reason = unwritable_reason(error) if error is not None else None
        try:
            write_row(self.plan["output_uri"], row, self.run_id)
        except OutputUnwritable as refused:
            reason = reason or str(refused)
        except StoreUnavailable as down:  # kept in memory: the shard's results carry it
            self.log.error("item %s: row not stored: %s", ctx.item_id, down)
        if reason and not self.runner.stopped:
            self.log.error("the output cannot take writes (%s): no more items are started", reason)
            self.runner.stop(f"the output cannot take writes ({reason})")
        stopped_by_run = row["status"] == "failed" and row["error"].startswith(RunStopped.__name__)
        if row["status"] == "failed" and not stopped_by_run:
            self.log.error("item %s failed: %s", ctx.item_id, row["error"])
        tripped = self.guard.observe(row, stopped_by_run)
        if tripped and not self.runner.stopped:
            self.log.error("shard %d: %s", self.plan["shard"], tripped)
            self.runner.stop(tripped)
            self.guarded = tripped
        done = len(self.rows)
        progress_log.info("%s: %s (%d/%d)", row["item_id"], row["status"], done, self.total,
                          extra={"done": done, "total": self.total, "row": row})


def _outcomes(contexts: list[ItemContext], future) -> list[tuple[ItemContext, dict, BaseException | None]]:
    """Each item's row, and the error it failed with (if it did)."""
    try:
        done = future.result()
    except Exception as error:  # the batch task itself failed: each of its items says why
        done = [failed_outcome(ctx, 1, error) for ctx in contexts]
    return [(ctx, row, error) for ctx, (row, error) in zip(contexts, done, strict=True)]


def _label(batch: list[ItemContext]) -> str:
    return batch[0].item_id + (f" and {len(batch) - 1} more" if len(batch) > 1 else "")


def batches_of(contexts: list[ItemContext], size: int) -> list[list[ItemContext]]:
    """Runs of `size` items, those of one config next to each other (they can share UNet calls)."""
    ordered = sorted(contexts, key=lambda c: config_key(c.edit_config))
    return [ordered[k:k + size] for k in range(0, len(ordered), size)]


def run_shard(plan_uri: str, workers: int | None = None, stopped: str | None = None,
              guarded: str | None = None) -> ShardOutcome:
    """Edit the items of a shard plan (written by the parent flow); their rows, as finished.

    Each worker is handed a batch of items (`runtime.batch_size`) at a time. Interrupted
    (Ctrl-C, SIGTERM), it starts no more batches, gives the running ones
    `INTERRUPT_GRACE_S` to finish (their rows are stored), ends the workers and re-raises.
    `stopped` (an earlier shard found the output full) or `guarded` (an earlier shard's run
    guard tripped, `tasks.guard`) starts none at all."""
    plan = json.loads(read_bytes(plan_uri))
    # Beating before anything slow (torch's import, the worker processes): the parent takes a
    # run that shows no sign of life for `lost_after_s` for lost (`flows.fanout.wait`).
    with heartbeat(join(shard_dir(plan["output_uri"], plan["shard"]), "heartbeat.json"), heartbeat_s()):
        return _edit_shard(plan, workers, stopped, guarded)


def _edit_shard(plan: dict, workers: int | None, stopped: str | None, guarded: str | None) -> ShardOutcome:
    log = get_run_logger()
    contexts = _contexts(plan)
    run_id, retries = str(flow_run.id), plan["retries"]
    delays = exponential_backoff(plan["retry_delay_s"])(retries) if retries else []
    batches = batches_of(contexts, dispatch_size(EditConfig.model_validate(plan["config"])))
    n_workers = default_workers() if workers in (None, AUTO_WORKERS) else workers
    log.info("shard %d: %d items in %d batches on %s", plan["shard"], len(contexts), len(batches),
             f"{n_workers} worker process(es)" if n_workers else "the run's own process")
    runner = item_runner(n_workers)
    if stopped or guarded:
        runner.stop(stopped or guarded)
    finished = _Rows(plan, run_id, runner, len(contexts))
    try:
        with ThreadPoolTaskRunner(max_workers=max(1, n_workers)) as pool:
            futures = {pool.submit(edit_batch_task, parameters={
                "contexts": batch, "runner": runner, "retries": retries, "delays_s": delays,
                "label": _label(batch)}): batch for batch in batches}
            try:
                for future in as_completed(futures):
                    for outcome in _outcomes(futures[future], future):
                        finished.add(*outcome)
            except BaseException:  # KeyboardInterrupt, SIGTERM: keep what finishes in the grace period
                runner.close(grace_s=INTERRUPT_GRACE_S)
                for future, batch in futures.items():
                    if future.state.is_completed():
                        for outcome in _outcomes(batch, future):
                            finished.add(*outcome)
                raise
    finally:
        runner.close()
    rows = list(finished.rows.values())
    table = results_table(rows, {})
    table = table.replace_schema_metadata({**table.schema.metadata, RUN_ID_KEY: run_id.encode()})
    try:
        write_bytes(join(shard_dir(plan["output_uri"], plan["shard"]), "results.parquet"), table_bytes(table))
    except (StoreUnavailable, OutputUnwritable) as error:
        log.error("shard %d: results not stored: %s", plan["shard"], error)
    guarded = finished.guarded or guarded
    unwritable = runner.stopped if runner.stopped not in (None, CLOSING, guarded) else None
    return ShardOutcome(rows, unwritable, guarded)


@flow(name="bulk-edit-shard")
def bulk_edit_shard(plan_uri: str, workers: int = AUTO_WORKERS) -> dict:
    """Edit one shard of a bulk run (launched by `bulk-edit`).

    Args:
        plan_uri: the shard's plan.json, written by the parent: its items, config and model.
        workers: items edited at once, each in its own process; -1: one per GPU, one on a CPU
            machine; 0: in the run's own process.
    """
    rows = run_shard(plan_uri, workers).rows
    failed = [r["item_id"] for r in rows if r["status"] == "failed"]
    summary = {"items": len(rows), "failed": failed}
    if failed:
        raise ItemsFailed(f"{len(failed)} of {len(rows)} items failed: {', '.join(failed[:10])}", summary)
    return summary
