"""A lost worker is the batch's fault until an item alone kills one (`tasks.batch_task`):
scripted runners stand for worker processes that die; the real ones are killed in
tests/test_faults.py."""

import pytest

from dragnext.config import build_config
from tasks.batch_task import edit_with_retries
from tasks.pool import RunStopped, WorkerLost
from tasks.stages import ItemContext, result_row


def contexts(*ids: str) -> list[ItemContext]:
    config = build_config().to_record()
    return [ItemContext(row={"item_id": i}, manifest_dir="m", output_uri="o", model="tiny", config=config)
            for i in ids]


class Workers:
    """A runner whose worker dies (SIGSEGV) on every batch holding `poison`, and on the first
    `one_off` batches whatever they hold."""

    def __init__(self, poison: set[str] = frozenset(), one_off: int = 0):
        self.poison, self.one_off, self.batches = poison, one_off, []

    def __call__(self, group: list[ItemContext], attempt: int):
        ids = [c.item_id for c in group]
        self.batches.append((ids, [list(c.worker_losses) for c in group]))
        if self.one_off > 0 or self.poison & set(ids):
            self.one_off -= 1
            raise WorkerLost("worker process 1 died", exitcode=-11)
        return [(result_row(c, "succeeded", attempt), None) for c in group]


def test_a_one_off_loss_edits_the_whole_batch_again_and_every_item_succeeds():
    workers = Workers(one_off=1)
    done = edit_with_retries(contexts("a", "b", "c"), workers, retries=0, delays_s=[])
    assert [row["status"] for row, _ in done] == ["succeeded"] * 3
    assert [ids for ids, _ in workers.batches] == [["a", "b", "c"]] * 2
    assert workers.batches[1][1] == [["worker died (signal SIGSEGV) editing a, b, c"]] * 3  # into the record


@pytest.mark.parametrize("poison, batches", [
    ("a", [list("abcd")] * 2 + [list("ab"), ["a"], ["b"], list("cd")]),
    ("d", [list("abcd")] * 2 + [list("ab"), list("cd"), ["c"], ["d"]]),
])
def test_an_item_that_kills_every_worker_is_bisected_out_and_fails_alone(poison, batches):
    workers = Workers(poison={poison})
    done = dict(zip("abcd", edit_with_retries(contexts(*"abcd"), workers, retries=2, delays_s=[0.0]),
                    strict=True))
    assert [ids for ids, _ in workers.batches] == batches  # no retry of the blamed item either
    for item, (row, _) in done.items():
        assert row["status"] == ("failed" if item == poison else "succeeded"), (item, row)
    row, error = done[poison]
    assert type(error).__name__ == "WorkerKilled" and row["attempts"] == 1
    assert row["error"].startswith("WorkerKilled: killed its worker 4 times (signal SIGSEGV), the last "
                                   "editing it alone; its batch-mates were edited without it")


def test_a_batch_of_one_is_blamed_on_its_second_loss():
    workers = Workers(poison={"a"})
    (row, _), = edit_with_retries(contexts("a"), workers, retries=0, delays_s=[])
    assert len(workers.batches) == 2 and "killed its worker 2 times" in row["error"]


def test_a_stopped_run_ends_the_bisection():
    def stopping(group, attempt):
        raise RunStopped("not finished: the run is stopping")

    rows = [row for row, _ in edit_with_retries(contexts("a", "b"), stopping, retries=2, delays_s=[])]
    assert [r["error"] for r in rows] == ["RunStopped: not finished: the run is stopping"] * 2


def test_a_run_stopped_mid_bisection_keeps_what_the_halves_finished():
    calls = []

    def runner(group, attempt):
        calls.append([c.item_id for c in group])
        if len(calls) == 4:
            raise RunStopped("not finished: the run is stopping")
        if "d" in calls[-1]:
            raise WorkerLost("worker process 1 died", exitcode=-9)
        return [(result_row(c, "succeeded", attempt), None) for c in group]

    done = edit_with_retries(contexts(*"abcd"), runner, retries=0, delays_s=[])
    assert calls[:3] == [list("abcd"), list("abcd"), list("ab")]
    assert [row["status"] for row, _ in done] == ["succeeded", "succeeded", "failed", "failed"]
    assert done[2][0]["error"] == "RunStopped: not finished: the run is stopping"
