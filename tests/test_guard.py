"""The run guard's count (tasks/guard.py), without a run."""

import pytest
from pydantic import ValidationError

from tasks.guard import GuardWatch, RunGuard


def rows(statuses: str) -> list[dict]:
    return [{"status": {"f": "failed", "s": "succeeded"}[c]} for c in statuses]


def first_trip(guard: RunGuard, statuses: str, stopped: set[int] = frozenset()) -> int | None:
    """The index of the row at which the guard trips, or None."""
    watch = GuardWatch(guard)
    for i, row in enumerate(rows(statuses)):
        if watch.observe(row, i in stopped):
            return i
    return None


def test_it_trips_once_more_than_the_fraction_of_the_first_items_failed():
    guard = RunGuard(items=4, failed_fraction=0.5)
    assert first_trip(guard, "fff") == 2  # 3 of 4 > 50%: known before the 4th finishes
    assert first_trip(guard, "ffsf") == 3
    assert first_trip(guard, "ffss" + "f" * 20) is None  # 2 of the first 4: a run past its start works
    assert first_trip(guard, "sfsfff") is None  # the failures after the first 4 do not count


def test_items_the_run_itself_stopped_do_not_count_and_none_never_trips():
    guard = RunGuard(items=4, failed_fraction=0.5)
    assert first_trip(guard, "fsffff", stopped={2, 3, 4}) is None  # judged: f, s, f, then only stopped ones
    assert first_trip(RunGuard(items=4, failed_fraction=None), "f" * 10) is None
    assert first_trip(RunGuard(items=1, failed_fraction=0.0), "f") == 0  # any failure at all


def test_the_reason_names_the_count_and_the_way_out():
    watch = GuardWatch(RunGuard(items=20, failed_fraction=0.5))
    reasons = [watch.observe(row, False) for row in rows("f" * 11)]
    assert reasons[:10] == [None] * 10
    assert reasons[10].startswith("11 of the first 11 items failed, more than the guard's 50% of 20")
    assert "dragnext retry" in reasons[10]


@pytest.mark.parametrize("bad", [{"items": 0}, {"failed_fraction": 1.5}, {"failed_fraction": float("nan")},
                                 {"extra": 1}])
def test_a_guard_that_cannot_work_is_refused(bad):
    with pytest.raises(ValidationError):
        RunGuard(**bad)
