"""A call repeated in the background while a block runs: the shard's heartbeat, the output
lease's renewal. A failing call is logged, never raised: a missed beat is not worth failing
a run for, and the next one may get through."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def every(seconds: float, action: Callable[[], bool | None], name: str,
          first_now: bool = False) -> Iterator[None]:
    """`action()` every `seconds` (and once at the start with `first_now`) until the block
    ends or `action` returns False."""
    stop = threading.Event()

    def loop() -> None:
        if not first_now and stop.wait(seconds):
            return
        while True:
            try:
                if action() is False:
                    return
            except Exception as error:
                log.warning("%s: %s: %s", name, type(error).__name__, error)
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=loop, daemon=True, name=name)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
