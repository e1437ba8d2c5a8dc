"""The Prefect task around one item: retried with back-off on transient errors only, run
by whichever runner (`tasks.pool`) the shard uses. Its task run is named after the item."""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from tasks.pool import RunStopped
from tasks.stages import ItemContext, is_retryable, result_row

Runner = Callable[[ItemContext, int], dict]


def _retry_transient(task, task_run, state) -> bool:
    return is_retryable(state.result(raise_on_failure=False))


@task(name="edit-item", task_run_name="edit {ctx.item_id}", cache_policy=NO_CACHE,
      retry_condition_fn=_retry_transient)
def edit_item_task(ctx: ItemContext, runner: Runner) -> dict:
    try:
        return runner(ctx, task_run.run_count or 1)
    except RunStopped as error:  # the run's state, not the item's failure: no retry, no error per item
        return result_row(ctx, "failed", 0, error=f"{type(error).__name__}: {error}")
