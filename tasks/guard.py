"""The run-level guard: a run whose first items mostly fail stops starting new ones.

A wrong model, a broken style LoRA or a manifest whose every image is unreadable fails
every item the same way; without a guard a nightly run spends the night finding that out
tens of thousands of times. The guard watches the items as they finish: once more than
`failed_fraction` of the first `items` have failed, it says why the run should stop, and
the runner starts no more (those items end `failed` with `RunStopped`, for `dragnext retry`
once the cause is fixed). Items stopped by the run itself do not count, nor does anything
after the first `items`: a run past its start has shown the model and manifest work.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RunGuard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    items: int = Field(20, ge=1, le=1_000_000, description="how many of the first finished items it judges")
    failed_fraction: float | None = Field(
        0.5, ge=0, le=1, allow_inf_nan=False,
        description="stop once more than this fraction of those items failed; None: never stop")


class GuardWatch:
    """One shard's count of its first items against its `RunGuard`."""

    def __init__(self, guard: RunGuard):
        self.guard, self.judged, self.failed = guard, 0, 0

    def observe(self, row: dict, stopped_by_run: bool) -> str | None:
        """Count a finished item's row; the reason to stop when the guard trips, else None."""
        limit = self.guard.failed_fraction
        if limit is None or stopped_by_run or self.judged >= self.guard.items:
            return None
        self.judged += 1
        self.failed += row["status"] == "failed"
        if self.failed <= limit * self.guard.items:
            return None
        return (f"{self.failed} of the first {self.judged} items failed, more than the guard's "
                f"{limit:.0%} of {self.guard.items} (a wrong model, LoRA or manifest?); the rest were not "
                "started: fix the cause, then `dragnext retry`")
