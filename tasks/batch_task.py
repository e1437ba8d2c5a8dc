"""The Prefect task around one batch of items, run by whichever runner (`tasks.pool`) the
shard uses. The work is `edit_with_retries`, a plain function: the items that failed with
a transient error (CUDA out of memory on their own, an unreachable store) are edited again,
together, after a back-off, up to `retries` more times; the others keep their rows.

A lost worker (SIGKILL, the kernel's OOM killer, a segfault) is a fault of the batch, not
of its items (`edit_isolating`): the batch is edited again on a fresh worker, resuming from
its stored stages; if that worker dies too the batch is bisected, and each half that dies
again is bisected, down to single items. An item is blamed when it kills a worker alone
after its group was lost `KILLS_TO_BLAME` times (a batch of one: when it killed that many):
it fails alone, its batch-mates go on. Every loss an item was part of is in its record."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.pool import RunStopped, WorkerLost
from tasks.stages import ItemContext, Outcome, failed_outcome, is_retryable, result_row

Runner = Callable[[list[ItemContext], int], list[Outcome]]
# One death may be a neighbour's memory or an operator's kill; a group is bisected on its
# second, and an item blamed on the death of a group holding just it that was lost before.
KILLS_TO_BLAME = 2


class WorkerKilled(RuntimeError):
    """An item that kills any worker that edits it (a crash in a library, memory it blows)."""


def _loss(lost: WorkerLost, group: list[ItemContext]) -> str:
    return f"worker died ({lost.cause}) editing {', '.join(c.item_id for c in group)}"


def edit_isolating(contexts: list[ItemContext], runner: Runner, attempt: int) -> list[Outcome]:
    """One outcome per context, in order, however many workers the batch kills; the items
    not edited when the run stops fail with `RunStopped`."""
    losses: dict[str, list[str]] = {c.item_id: list(c.worker_losses) for c in contexts}
    outcomes: dict[str, Outcome] = {}
    pending: list[tuple[list[ItemContext], int]] = [(contexts, 0)]  # a group, and its deaths
    while pending:
        group, deaths = pending.pop(0)
        group = [replace(c, worker_losses=tuple(losses[c.item_id])) for c in group]
        try:
            done = runner(group, attempt)
        except WorkerLost as lost:
            for ctx in group:
                losses[ctx.item_id].append(_loss(lost, group))
            deaths += 1
            if len(group) == 1 and deaths >= KILLS_TO_BLAME:
                ctx = group[0]
                error = WorkerKilled(f"killed its worker {len(losses[ctx.item_id])} times ({lost.cause}), "
                                     "the last editing it alone; its batch-mates were edited without it "
                                     f"({'; '.join(losses[ctx.item_id])})")
                outcomes[ctx.item_id] = failed_outcome(ctx, attempt, error)
            elif deaths == 1 or len(group) == 1:  # once may be a one-off: the same group again
                pending.insert(0, (group, deaths))
            else:
                half = len(group) // 2
                pending[:0] = [(group[:half], 1), (group[half:], 1)]
            continue
        except RunStopped as stopped:  # the run's state: what is done stays done
            for ctx in [*group, *(c for rest, _ in pending for c in rest)]:
                outcomes[ctx.item_id] = result_row(ctx, "failed", 0, error=f"RunStopped: {stopped}"), stopped
            break
        except Exception as error:  # the group's own failure (the model did not load)
            done = [failed_outcome(ctx, attempt, error) for ctx in group]
        outcomes.update((ctx.item_id, outcome) for ctx, outcome in zip(group, done, strict=True))
    return [outcomes[c.item_id] for c in contexts]


def edit_with_retries(contexts: list[ItemContext], runner: Runner, retries: int,
                      delays_s: list[float]) -> list[Outcome]:
    """One outcome per context, in order, after at most `retries` more attempts."""
    outcomes: dict[str, Outcome] = {}
    todo = contexts
    for attempt in range(1, retries + 2):
        done = edit_isolating(todo, runner, attempt)
        stopped = any(isinstance(error, RunStopped) for _, error in done)
        for ctx, (row, error) in zip(todo, done, strict=True):
            if not (isinstance(error, RunStopped) and ctx.item_id in outcomes):  # an earlier try's row stays
                outcomes[ctx.item_id] = row, None if isinstance(error, RunStopped) else error
        if stopped:
            break
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
