"""A Prefect API for a `dragnext` command that runs without a configured server.

Prefect's ephemeral mode starts its temporary server in the command's own process group,
so a terminal's Ctrl-C kills the server with the command; the run can then neither finish
the task runs in hand nor record its end, and it hung for minutes (measured). This starts
the same server (`prefect server start`, the API alone) in a session of its own, points the
command at it, and stops it when the command ends; if the command is killed outright, its
watchdog (`flows.watchdog`) ends the server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

DRAIN_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(process: subprocess.Popen, url: str, timeout_s: float, log_path: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    with open(log_path, errors="replace") as log:
        tail = log.read()[-2000:]
    raise RuntimeError(f"the local Prefect server did not start within {timeout_s:.0f} s: {tail}")


@contextmanager
def local_api(timeout_s: float = 120.0) -> Iterator[None]:
    """A Prefect API for the block: the configured one, or a local server of its own."""
    if PREFECT_API_URL.value():
        yield
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with tempfile.NamedTemporaryFile("w+", prefix="dragnext-prefect-server-", suffix=".log") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-ui", "--no-services", "--log-level", "error"],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        try:
            _wait_healthy(process, url, timeout_s, log.name)
            with temporary_settings(updates={PREFECT_API_URL: url}):
                try:
                    yield
                finally:
                    # Logs and events still queued go out now, while the server is up; left
                    # for the interpreter's exit, they would wait on a server that is gone.
                    APILogWorker.drain_all(timeout=DRAIN_S)
                    EventsWorker.drain_all(timeout=DRAIN_S)
        finally:
            process.terminate()
            try:
                process.wait(3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
