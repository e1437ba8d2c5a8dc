"""One run at a time per output: a lease object `OUT/lease.json` (run id, host, pid and a
heartbeat time), created only if absent (a conditional put on S3, a hard link locally) and
renewed while the run lives.

A second run into the same output refuses, naming the holder, while the holder's heartbeat
is fresh. A lease whose heartbeat is older than `stale_after_s`, or whose process on this
same machine is gone, belongs to a run that died (killed, machine lost): the next run takes
it over and says so. The same flow run (a
retried flow run, or `retry` in the same run id) may re-take its own lease.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from flows.periodic import every
from manifests import lock
from manifests.lock import Holder
from manifests.storage import join, write_bytes

log = logging.getLogger(__name__)
LEASE_NAME = "lease.json"


class OutputInUse(RuntimeError):
    """Another live run holds the output's lease."""


def lease_uri(output_uri: str) -> str:
    return join(output_uri, LEASE_NAME)


def holder(output_uri: str) -> Holder | None:
    """Who holds the output's lease, if anyone (a torn lease counts as a dead holder's)."""
    return lock.holder(lease_uri(output_uri))


def _in_use(output_uri: str, current: Holder) -> OutputInUse:
    return OutputInUse(f"output {output_uri} is in use by {current.describe()}; wait for that run to "
                       "end, or write to another --output")


def check_free(output_uri: str, run_id: str | None, stale_after_s: float) -> Holder | None:
    """Raises `OutputInUse` when a live run other than `run_id` holds the output; returns a
    stale holder (to be taken over), or None."""
    current = holder(output_uri)
    if current is None or current.run_id == run_id:
        return None
    if current.is_live(stale_after_s):
        raise _in_use(output_uri, current)
    return current


def acquire(output_uri: str, run_id: str, stale_after_s: float) -> None:
    """Take the output's lease or raise `OutputInUse`."""
    try:
        lock.acquire(lease_uri(output_uri), run_id, stale_after_s, name=f"output {output_uri}")
    except lock.Held as held:
        raise _in_use(output_uri, held.holder) from None


@contextmanager
def leased(output_uri: str, run_id: str, stale_after_s: float, every_s: float) -> Iterator[None]:
    """Hold the output's lease for the block, renewing it every `every_s` seconds."""
    acquire(output_uri, run_id, stale_after_s)

    def renew() -> bool:
        current = holder(output_uri)
        if current is not None and current.run_id != run_id:
            log.error("output %s was taken over by %s; this run's results may be overwritten",
                      output_uri, current.describe())
            return False
        write_bytes(lease_uri(output_uri), lock.mine(run_id))
        return True

    try:
        with every(every_s, renew, f"lease on {output_uri}"):
            yield
    finally:
        try:
            lock.release(lease_uri(output_uri), run_id)
        except Exception as error:  # a stale lease is taken over by the next run anyway
            log.warning("releasing the lease on %s: %s", output_uri, error)
