"""The Prefect task around one batch of items, run by whichever runner (`tasks.pool`) the
shard uses. The work is `edit_with_retries`, a plain function: the items that failed with
a transient error (CUDA out of memory on their own, an unreachable store) are edited again,
together, after a back-off, up to `retries` more times; the others keep their rows."""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.pool import RunStopped
from tasks.stages import ItemContext, Outcome, failed_outcome, is_retryable, result_row

Runner = Callable[[list[ItemContext], int], list[Outcome]]


def edit_with_retries(contexts: list[ItemContext], runner: Runner, retries: int,
                      delays_s: list[float]) -> list[Outcome]:
    """One outcome per context, in order, after at most `retries` more attempts."""
    outcomes: dict[str, Outcome] = {}
    todo = contexts
    for attempt in range(1, retries + 2):
        try:
            done = runner(todo, attempt)
        except RunStopped as stopped:  # the run's state, not the items' failure
            return [outcomes.get(c.item_id) or (result_row(c, "failed", 0, error=f"RunStopped: {stopped}"),
                                                None) for c in contexts]
        except Exception as error:  # the batch's own failure (its worker died, the model did not load)
            done = [failed_outcome(ctx, attempt, error) for ctx in todo]
        outcomes.update((ctx.item_id, outcome) for ctx, outcome in zip(todo, done, strict=True))
        todo = [ctx for ctx, (_, error) in zip(todo, done, strict=True)
                if error is not None and is_retryable(error)]
        if not todo or attempt > retries:
            break
        time.sleep(delays_s[min(attempt - 1, len(delays_s) - 1)] if delays_s else 0.0)
    return [outcomes[c.item_id] for c in contexts]


@task(name="edit-batch", task_run_name="edit {label}", cache_policy=NO_CACHE)
def edit_batch_task(contexts: list[ItemContext], runner: Runner, retries: int, delays_s: list[float],
                    label: str) -> list[Outcome]:
    return edit_with_retries(contexts, runner, retries, delays_s)
