"""Shards on the work pool: one flow run of the `bulk-edit-shard` deployment per shard,
launched with Prefect's `run_deployment`, watched until each ends, and each shard's rows
collected from the store. A shard whose flow run crashed, was cancelled, or stopped
beating (its machine died) leaves its unfinished items as `failed`, naming the run."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Crashed

from dragnext.fingerprint import digest
from flows.results import read_rows, table_rows
from flows.shard import RUN_ID_KEY, shard_dir
from manifests.schema import read_table
from manifests.storage import exists, join, read_bytes

log = logging.getLogger(__name__)
POLL_S = 2.0


@dataclass
class Shard:
    index: int
    plan_uri: str
    item_ids: list[str]
    run: FlowRun | None = None
    lost: str | None = None  # why its rows may be missing


def default_shard_size(items: int, deployment: str) -> int:
    """Two shards per online worker of the deployment's pool, so every worker gets work and
    a fast worker can take more."""
    with get_client(sync_client=True) as client:
        pool = client.read_deployment_by_name(deployment).work_pool_name
        online = [w for w in client.read_workers_for_work_pool(pool) if str(w.status).endswith("ONLINE")]
    return max(1, math.ceil(items / (2 * max(1, len(online)))))


def launch(shards: list[Shard], deployment: str, parent_run_id: str) -> str:
    """One child flow run per shard; returns the work pool they run on. The idempotency key
    is the parent run, the shard and its items: a retried parent with the same work
    attaches to the runs it launched before."""
    with get_client(sync_client=True) as client:
        pool = client.read_deployment_by_name(deployment).work_pool_name
    for shard in shards:
        shard.run = run_deployment(
            deployment, parameters={"plan_uri": shard.plan_uri}, timeout=0, as_subflow=True,
            flow_run_name=f"shard-{shard.index}",
            idempotency_key=f"{parent_run_id}/{shard.index}/{digest(shard.item_ids)}")
        log.info("shard %d (%d items): flow run %s", shard.index, len(shard.item_ids), shard.run.name)
    return pool


def wait(shards: list[Shard], output_uri: str, lost_after_s: float) -> None:
    """Until every shard's run has ended, or was claimed by a worker (Pending, Running) and
    has shown no sign of life for `lost_after_s`. Scheduled runs just wait for a free worker.

    A sign of life is a heartbeat or a change of state (a run claimed but still starting its
    process has not beaten yet), so a slow start is not taken for a dead worker."""
    last_sign: dict[int, tuple[tuple, float]] = {}  # shard → (its last sign, when it was new)
    pending = list(shards)
    with get_client(sync_client=True) as client:
        while pending:
            for shard in list(pending):
                run = client.read_flow_run(shard.run.id)
                shard.run = run
                if run.state and run.state.is_final():
                    if not run.state.is_completed():
                        shard.lost = f"flow run {run.name} ({run.id}) ended {run.state.type.value}: " \
                                     f"{run.state.message or ''}".strip()
                    pending.remove(shard)
                elif run.state and (run.state.is_running() or run.state.is_pending()):
                    # Pending too: a worker that claimed the run and died leaves it there
                    beat = _heartbeat(output_uri, shard.index)
                    sign = (run.state.type, beat)
                    if shard.index not in last_sign or last_sign[shard.index][0] != sign:
                        last_sign[shard.index] = (sign, time.monotonic())
                    elif time.monotonic() - last_sign[shard.index][1] > lost_after_s:
                        shard.lost = f"flow run {run.name} ({run.id}) has not beaten or left " \
                                     f"{run.state.type.value} for {lost_after_s:.0f} s: its worker is gone"
                        client.set_flow_run_state(run.id, Crashed(message=shard.lost), force=True)
                        pending.remove(shard)
            if pending:
                time.sleep(POLL_S)


def _heartbeat(output_uri: str, shard: int) -> bytes | None:
    try:
        return read_bytes(join(shard_dir(output_uri, shard), "heartbeat.json"))
    except FileNotFoundError:  # not started beating yet
        return None


def collect_all(shards: list[Shard], output_uri: str) -> dict[str, dict]:
    """The rows the shards' own runs wrote, in bulk: each shard's results file (one read),
    and only for a shard without one (its run was killed) the item rows (`OUT/rows/`) that
    its run stamped."""
    found: dict[str, dict] = {}
    stored: dict[str, dict] | None = None
    for shard in shards:
        run_id = str(shard.run.id)
        results_uri = join(shard_dir(output_uri, shard.index), "results.parquet")
        if exists(results_uri):
            table = read_table(results_uri)
            if (table.schema.metadata or {}).get(RUN_ID_KEY, b"").decode() == run_id:
                found.update((r["item_id"], r) for r in table_rows(table))
                continue
        stored = read_rows(output_uri) if stored is None else stored
        found.update((i, stored[i]) for i in shard.item_ids
                     if i in stored and stored[i].get("run_id") == run_id)
    return found
