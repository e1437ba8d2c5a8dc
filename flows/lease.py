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

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import psutil

from flows.periodic import every
from manifests.storage import create_exclusive, delete, join, read_bytes, write_bytes

log = logging.getLogger(__name__)
LEASE_NAME = "lease.json"


class OutputInUse(RuntimeError):
    """Another live run holds the output's lease."""


@dataclass(frozen=True)
class Holder:
    run_id: str
    host: str
    pid: int
    beat: float  # time.time() of its last heartbeat

    def is_dead_here(self) -> bool:
        """A holder on this machine whose process is gone (killed) need not be waited for."""
        return self.host == socket.gethostname() and not psutil.pid_exists(self.pid)

    def describe(self) -> str:
        return f"run {self.run_id} on host {self.host} (pid {self.pid}), last heartbeat " \
               f"{time.time() - self.beat:.0f} s ago"


def lease_uri(output_uri: str) -> str:
    return join(output_uri, LEASE_NAME)


def holder(output_uri: str) -> Holder | None:
    """Who holds the output's lease, if anyone (a torn lease counts as a dead holder's)."""
    try:
        data = json.loads(read_bytes(lease_uri(output_uri)))
        return Holder(str(data["run_id"]), str(data["host"]), int(data["pid"]), float(data["beat"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return Holder("<unreadable>", "?", 0, 0.0)


def check_free(output_uri: str, run_id: str | None, stale_after_s: float) -> Holder | None:
    """Raises `OutputInUse` when a live run other than `run_id` holds the output; returns a
    stale holder (to be taken over), or None."""
    current = holder(output_uri)
    if current is None or current.run_id == run_id:
        return None
    if time.time() - current.beat <= stale_after_s and not current.is_dead_here():
        raise OutputInUse(f"output {output_uri} is in use by {current.describe()}; wait for that run to "
                          "end, or write to another --output")
    return current


def _mine(run_id: str) -> bytes:
    me = Holder(run_id, socket.gethostname(), os.getpid(), time.time())
    return json.dumps(asdict(me)).encode()


def acquire(output_uri: str, run_id: str, stale_after_s: float) -> None:
    """Take the output's lease or raise `OutputInUse`."""
    uri = lease_uri(output_uri)
    if create_exclusive(uri, _mine(run_id)):
        return
    stale = check_free(output_uri, run_id, stale_after_s)
    if stale is None:  # our own lease, from an earlier attempt of this run
        write_bytes(uri, _mine(run_id))
        return
    log.warning("taking over output %s from %s: that run is gone", output_uri, stale.describe())
    delete(uri)
    if not create_exclusive(uri, _mine(run_id)):  # another run took it over first
        raise OutputInUse(f"output {output_uri} was taken over by {holder(output_uri).describe()}")


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
        write_bytes(lease_uri(output_uri), _mine(run_id))
        return True

    try:
        with every(every_s, renew, f"lease on {output_uri}"):
            yield
    finally:
        try:
            if (current := holder(output_uri)) is not None and current.run_id == run_id:
                delete(lease_uri(output_uri))
        except Exception as error:  # a stale lease is taken over by the next run anyway
            log.warning("releasing the lease on %s: %s", output_uri, error)
