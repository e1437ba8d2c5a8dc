"""Where items run: in the calling process (`InlineRunner`, one worker) or in a pool of
worker processes (`ProcessRunner`, one per GPU or as many as asked for on the CPU).

Each worker process keeps its own model (`WorkerState`) and serves one item at a time over
a pipe: the item's context goes in, its results row (or its exception) comes back, as
plain data. A worker that dies (OOM killer, segfault, SIGKILL) fails only the item it was
running, with `WorkerLost`; a fresh process takes its place and the other items go on.
A worker whose parent is gone (the run was killed) exits by itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from multiprocessing.connection import Connection

from tasks.stages import ItemContext, edit_item
from tasks.worker import WorkerState

log = logging.getLogger(__name__)


class WorkerLost(RuntimeError):
    """The worker process running an item died before it answered."""


class InlineRunner:
    """Items edited one at a time in this process."""

    def __init__(self) -> None:
        self.worker = WorkerState()

    def __call__(self, ctx: ItemContext, attempt: int) -> dict:
        return edit_item(ctx, self.worker, attempt)

    def close(self) -> None:
        pass


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(1.0)


def _serve(conn: Connection, parent_pid: int, log_level: int) -> None:
    """A worker process: edit the items sent to it until told to stop (None)."""
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s [worker %(process)d]: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    worker = WorkerState()
    while (message := conn.recv()) is not None:
        ctx, attempt = message
        try:
            conn.send(("row", edit_item(ctx, worker, attempt)))
        except Exception as error:  # sent back as data: the item fails, the worker goes on
            try:
                conn.send(("error", error))
            except Exception:  # an exception that does not pickle
                conn.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))


class _Slot:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, daemon=True, name="dragnext-worker",
                                       args=(child, os.getpid(), logging.getLogger().getEffectiveLevel()))
        self.process.start()
        child.close()

    def _lost(self) -> WorkerLost:
        self.process.join(5)
        return WorkerLost(f"worker process {self.process.pid} died (exit code {self.process.exitcode}) "
                          "while editing this item")

    def run(self, ctx: ItemContext, attempt: int) -> dict:
        try:
            self.conn.send((ctx, attempt))
            while not self.conn.poll(0.5):
                if not self.process.is_alive():
                    raise self._lost()
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            raise self._lost() from None
        if kind == "error":
            raise value
        return value

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class ProcessRunner:
    """Items edited in `workers` processes at once; call it from as many threads."""

    def __init__(self, workers: int) -> None:
        self._context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._slots = [_Slot(self._context) for _ in range(workers)]
        for slot in self._slots:
            self._free.put(slot)

    def _replace(self, slot: _Slot) -> _Slot:
        fresh = _Slot(self._context)
        self._slots[self._slots.index(slot)] = fresh
        return fresh

    def __call__(self, ctx: ItemContext, attempt: int) -> dict:
        slot = self._free.get()
        if not slot.process.is_alive():  # died between items: nothing was lost
            log.warning("worker %d died while idle; starting a fresh one", slot.process.pid)
            slot = self._replace(slot)
        try:
            return slot.run(ctx, attempt)
        except WorkerLost:
            log.error("item %s: worker %d died; starting a fresh one", ctx.item_id, slot.process.pid)
            slot = self._replace(slot)
            raise
        finally:
            self._free.put(slot)

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots]

    def close(self) -> None:
        for slot in self._slots:
            slot.stop()


def item_runner(workers: int) -> InlineRunner | ProcessRunner:
    return InlineRunner() if workers <= 1 else ProcessRunner(workers)


def default_workers() -> int:
    """One item per GPU at a time; one at a time on the CPU."""
    import torch

    return max(1, torch.cuda.device_count())
