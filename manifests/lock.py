"""An object only one owner may hold at a time, on any store: created only if absent (a
conditional put on S3, a hard link locally), naming its holder (an owner id, host, pid and
a heartbeat time). A holder whose heartbeat is older than `stale_after_s`, or whose process
on this same machine is gone, died holding it: the next owner takes it over. The output
lease of a run (`flows.lease`) and a manifest's append lock (`manifests.append`) are such
objects."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass

import psutil

from manifests.storage import create_exclusive, delete, read_bytes, write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    run_id: str  # the owner: a flow run's id, a studio's
    host: str
    pid: int
    beat: float  # time.time() of its last heartbeat

    def is_dead_here(self) -> bool:
        """A holder on this machine whose process is gone (killed) need not be waited for."""
        return self.host == socket.gethostname() and not psutil.pid_exists(self.pid)

    def describe(self) -> str:
        return f"run {self.run_id} on host {self.host} (pid {self.pid}), last heartbeat " \
               f"{time.time() - self.beat:.0f} s ago"

    def is_live(self, stale_after_s: float) -> bool:
        return time.time() - self.beat <= stale_after_s and not self.is_dead_here()


class Held(RuntimeError):
    """A live owner other than the caller holds the lock."""

    def __init__(self, holder: Holder):
        super().__init__(holder.describe())
        self.holder = holder


def holder(uri: str) -> Holder | None:
    """Who holds the lock at `uri`, if anyone (a torn lock counts as a dead holder's)."""
    try:
        data = json.loads(read_bytes(uri))
        return Holder(str(data["run_id"]), str(data["host"]), int(data["pid"]), float(data["beat"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return Holder("<unreadable>", "?", 0, 0.0)


def mine(owner: str) -> bytes:
    me = Holder(owner, socket.gethostname(), os.getpid(), time.time())
    return json.dumps(asdict(me)).encode()


def acquire(uri: str, owner: str, stale_after_s: float, name: str | None = None) -> None:
    """Take the lock at `uri` (again, if `owner` holds it already), or raise `Held`; `name`
    says what it guards in the line that reports a take-over."""
    if create_exclusive(uri, mine(owner)):
        return
    current = holder(uri)
    if current is not None and current.run_id == owner:  # our own, from an earlier attempt
        write_bytes(uri, mine(owner))
        return
    if current is not None and current.is_live(stale_after_s):
        raise Held(current)
    if current is not None:
        log.warning("taking over %s from %s: it is gone", name or uri, current.describe())
    delete(uri)
    if not create_exclusive(uri, mine(owner)):  # another owner took it over first
        raise Held(holder(uri) or Holder("<unknown>", "?", 0, time.time()))


def release(uri: str, owner: str) -> None:
    """Give the lock up if `owner` still holds it."""
    if (current := holder(uri)) is not None and current.run_id == owner:
        delete(uri)
