"""Nothing of a run outlives it: `python -m flows.watchdog PID` watches the `dragnext`
process PID, remembers its descendants (the Prefect server of ephemeral mode, worker
processes, multiprocessing's resource tracker) and, once PID is gone (finished, crashed or
SIGKILLed), ends those still running: SIGTERM, then SIGKILL after a grace period."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 5.0


def start(pid: int) -> subprocess.Popen:
    """The watchdog of `pid`, in a session of its own so the terminal's Ctrl-C spares it."""
    return subprocess.Popen([sys.executable, "-m", "flows.watchdog", str(pid)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _descendants(parent: psutil.Process) -> dict[int, float]:
    found = {}
    for child in parent.children(recursive=True):
        if child.pid == os.getpid():  # the watchdog is the run's child too
            continue
        try:
            found[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            pass
    return found


def _alive(known: dict[int, float]) -> list[psutil.Process]:
    """Those still running, checked by start time so a reused PID is never touched."""
    alive = []
    for pid, created in known.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def watch(pid: int) -> None:
    known: dict[int, float] = {}
    try:
        parent = psutil.Process(pid)
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            known.update(_descendants(parent))
            time.sleep(POLL_S)
    except psutil.NoSuchProcess:  # gone between two looks: what it left is in `known`
        pass
    left = _alive(known)
    for process in left:
        _signal(process.terminate)
    _, still = psutil.wait_procs(left, timeout=GRACE_S)
    for process in still:
        _signal(process.kill)


def _signal(send) -> None:
    """Workers watch their parent too, so one may be gone by the time it is signalled."""
    try:
        send()
    except psutil.NoSuchProcess:
        pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
